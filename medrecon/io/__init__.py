"""Volume I/O: DICOM series, NIfTI, NRRD/MetaImage and .npy in; NIfTI, NRRD/MHA and derived DICOM out;
BART .cfl/.hdr arrays in and out.

Geometry is kept in LPS (DICOM, ITK) in the Volume; NIfTI is converted to and from RAS on the way.
Every write is atomic (:func:`atomic_path`) and never replaces an existing output unless asked.
"""
from .atomic import atomic_path
from .cfl import read_cfl, write_cfl
from .dicom_read import read_dicom_series, resample_along_normal
from .dicom_scan import SeriesInfo, choose_series, dicom_text, list_series
from .dicom_write import stored_scaling, write_dicom_series
from .discovery import find_volume_paths
from .dispatch import is_volume_file, named_like_a_file, output_format, read_npy, read_volume, write_volume
from .itk import read_itk, write_itk
from .nifti import read_nifti, write_nifti

__all__ = ["atomic_path", "dicom_text", "read_cfl", "write_cfl", "SeriesInfo", "choose_series", "list_series", "read_dicom_series",
           "resample_along_normal", "find_volume_paths", "stored_scaling", "write_dicom_series", "named_like_a_file", "output_format", "is_volume_file",
           "read_npy", "read_volume", "write_volume", "read_itk", "write_itk", "read_nifti", "write_nifti"]

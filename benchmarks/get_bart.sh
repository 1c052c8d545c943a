#!/bin/sh
# BART (Debian's bart 0.8.00) for bench_mri_raw.py's BART rows, without root: the .deb and its libraries unpacked
# into DIR (default out/tools/bart), a wrapper DIR/bin/bart that sets LD_LIBRARY_PATH.
#   sh benchmarks/get_bart.sh [DIR] && export PATH="$PWD/out/tools/bart/bin:$PATH"
# With root, `apt-get install bart` does the same.
set -eu
DIR=$(mkdir -p "${1:-out/tools/bart}" && cd "${1:-out/tools/bart}" && pwd)
cd "$DIR"
apt-get download bart libfftw3-single3 liblapacke libblas3 liblapack3 libgfortran5 libtmglib3
for d in ./*.deb; do dpkg -x "$d" root; done
L="$DIR/root/usr/lib/x86_64-linux-gnu"
mkdir -p bin
cat > bin/bart <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$L:$L/blas:$L/lapack\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DIR/root/usr/bin/bart" "\$@"
WRAP
chmod +x bin/bart
bin/bart version

"""YAML settings files read strictly, and the hints for their unknown keys: shared by configs and the PACS settings,
without the reconstruction's imports (``medrecon pacs echo`` loads no torch)."""
from __future__ import annotations

import difflib
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last without a word); a
    merge key (``<<: *anchor``) is PyYAML's to expand, and a key given beside it overrides the merged one."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # PyYAML's own check refuses it below ("found unhashable key")
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice in one section",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_load(text: str):
    """A YAML document as safe_load reads it, a key given twice in one mapping being an error (yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_yaml_file(path):
    """The YAML document of the file ``path`` (``read_settings_text``, ``parse_yaml``)."""
    return parse_yaml(read_settings_text(path), path)


def read_settings_text(path) -> str:
    """The text of the settings file ``path``; one line naming it where it cannot be read or is not UTF-8."""
    from medrecon.errors import InputError
    from medrecon.io.atomic import os_reason

    refuse_folder(path, "settings file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({os_reason(e) if isinstance(e, OSError) else e}); make it "
                         "readable and save it as UTF-8") from None


def refuse_folder(path, what: str) -> None:
    """One line for a folder given where a YAML file (``what``) goes, naming up to five YAML files in it (it was
    "not found", or "Is a directory; make it readable")."""
    from medrecon.errors import InputError

    if Path(path).is_dir():
        inside = sorted(q.name for q in Path(path).glob("*.y*ml"))
        raise InputError(f"{path}: a folder, not a {what}; give a YAML file" +
                         (f" (in it: {', '.join(inside[:5])}{', ...' * (len(inside) > 5)})" if inside else ""))


def parse_yaml(text: str, label):
    """``text`` read by ``yaml_load``; one line naming ``label`` (its file) and the line and column where it is not
    valid YAML."""
    from medrecon.errors import InputError

    try:
        return yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{label}:{where}: not valid YAML ({what}); fix the syntax") from None


def model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class (a pydantic model) at a key path below ``root``, or None."""
    cls: Any = root
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
        ann = args[0] if args and not (isinstance(ann, type) and issubclass(ann, BaseModel)) else ann
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def unknown_key_hint(section: type[BaseModel] | None, key) -> str:
    """'did you mean "rho"?' for a key misspelt in ``section`` (a pydantic model), else the keys it knows."""
    names = list(section.model_fields) if section else []
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    return f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(names)}"

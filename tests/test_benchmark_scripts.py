"""Every benchmark script still imports and parses its options: they share helpers (bench_real's), and a renamed
helper once broke five of them without a test noticing."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_the_scripts_are_found():
    assert {"bench_real", "bench_quality", "tune_ztv"} <= {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports_and_answers_help(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import one another by name
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = getattr(mod, "main", None)
    if main is None or "argparse" not in script.read_text():
        return  # no options to ask for; importing it is the check
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])  # main() or main(argv=None) reads sys.argv
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()

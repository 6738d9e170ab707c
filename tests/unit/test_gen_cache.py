"""`gen`'s cache of whole files and runs (driver/cache.py) and its worker processes: the same outputs as a
run without them, and only what changed is made again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from layerdsl.driver import pipeline
from layerdsl.driver.cache import OutputCache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def specs(tmp_path) -> Path:
    folder = tmp_path / "specs"
    shutil.copytree(ROOT / "specs", folder)
    return folder


def _emitted_count(monkeypatch) -> list[str]:
    """The spec paths whose module is emitted from now on."""
    from layerdsl.codegen import module

    seen: list[str] = []
    real = module.emit_file

    def counting(spec, program, spec_path, *args, **kwargs):
        seen.append(spec_path)
        return real(spec, program, spec_path, *args, **kwargs)

    monkeypatch.setattr(module, "emit_file", counting)
    return seen


def test_cached_outputs_are_the_uncached_ones(specs, tmp_path, monkeypatch):
    cache = OutputCache(tmp_path / "cache")
    fresh = pipeline.generate([str(specs)], OutputCache(None))
    assert pipeline.generate([str(specs)], cache) == fresh
    monkeypatch.setattr(pipeline, "_checked", lambda *a: pytest.fail("an unchanged run parsed its specs"))
    assert pipeline.generate([str(specs)], cache) == fresh


def test_an_edit_remakes_the_edited_module_and_those_naming_its_layers(specs, tmp_path, monkeypatch):
    cache = OutputCache(tmp_path / "cache")
    pipeline.generate([str(specs)], cache)
    emitted = _emitted_count(monkeypatch)
    spec = specs / "centered_layer.layer"  # defines CenteredLayer, which no other spec names
    spec.write_text(spec.read_text().replace("Subtract the mean", "Remove the mean"))
    outputs = pipeline.generate([str(specs)], cache)
    assert emitted == ["specs/centered_layer.layer"]
    assert outputs == pipeline.generate([str(specs)], OutputCache(None))
    emitted.clear()
    other = specs / "attention_scores.layer"
    other.write_text(other.read_text() + "\n")
    pipeline.generate([str(specs)], cache)
    assert emitted == ["specs/attention_scores.layer"]


def test_a_module_is_remade_when_a_layer_it_names_changes(specs, tmp_path, monkeypatch):
    (specs / "user.layer").write_text(
        "layer UsesCentered() {\n    sub inner = CenteredLayer()\n\n    forward(x) {\n        return inner(x) * 2\n    }\n}\n"
    )
    cache = OutputCache(tmp_path / "cache")
    pipeline.generate([str(specs)], cache)
    emitted = _emitted_count(monkeypatch)
    spec = specs / "centered_layer.layer"
    spec.write_text(spec.read_text().replace("Subtract the mean", "Remove the mean"))
    pipeline.generate([str(specs)], cache)
    assert sorted(emitted) == ["specs/centered_layer.layer", "specs/user.layer"]


def test_workers_emit_what_one_process_emits(tmp_path, monkeypatch):
    import importlib.util

    loader = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
    assert loader is not None and loader.loader is not None
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
    folder = tmp_path / "many"
    folder.mkdir()
    bench.make_specs(folder, 2 * pipeline.MIN_JOBS_PER_WORKER + 3)  # enough modules for two workers
    monkeypatch.setenv("LAYERDSL_JOBS", "1")
    alone = pipeline.generate([str(folder)], OutputCache(None))
    monkeypatch.setenv("LAYERDSL_JOBS", "2")
    assert pipeline.generate([str(folder)], OutputCache(None)) == alone


def test_workers_parse_what_one_process_parses(tmp_path, monkeypatch):
    """Files parsed in forked workers come back as the same IR, and every problem in the sources' order:
    syntax errors, a file without a layer and a file name that is no module name, on both sides of the
    split between the workers' share and the main process's."""
    import importlib.util
    import os

    loader = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
    assert loader is not None and loader.loader is not None
    bench = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench)
    folder = tmp_path / "many"
    folder.mkdir()
    bench.make_specs(folder, 2 * pipeline.MIN_FILES_PER_PARSER + 3)  # enough files for a parsing worker
    spec_files = sorted(folder.glob("*.layer"))
    for broken in (spec_files[5], spec_files[-5]):
        broken.write_text(broken.read_text().replace("{", "{ )", 1))
    (folder / "aa_empty.layer").write_text("# nothing here\n")
    (folder / "zz-dash.layer").write_text(spec_files[0].read_text().replace("layer ", "layer Dash", 1))
    sources = pipeline.find_sources([str(folder)])
    texts, _ = pipeline.read_texts(sources)

    parsers = tmp_path / "parsers"
    real = pipeline.parse_source

    def recording(src, text):
        with open(parsers, "a") as log:
            log.write(f"{os.getpid()}\n")
        return real(src, text)

    monkeypatch.setattr(pipeline, "parse_source", recording)
    monkeypatch.setenv("LAYERDSL_JOBS", "1")
    alone = pipeline.load(sources, texts)
    assert len(set(parsers.read_text().split())) == 1
    parsers.unlink()
    monkeypatch.setenv("LAYERDSL_JOBS", "2")
    shared = pipeline.load(sources, texts)
    assert len(set(parsers.read_text().split())) == 2  # the main process and one worker

    def described(loaded):
        files, problems = loaded
        parsed = [(repr(f), [d.render() for d in f.problems]) for f in files]  # type: ignore[attr-defined]
        return parsed, [(d.render(), d.source) for d in problems]

    assert described(shared) == described(alone)
    messages = [d.message for d in alone[1]]
    assert messages[0] == "this file defines no layer" and "'zz-dash'" in messages[1] and len(messages) == 2
    syntax_errors = [f.path for f in alone[0] if f.problems]  # type: ignore[attr-defined]
    assert syntax_errors == [sources[6].shown, sources[-6].shown]  # after aa_empty, before zz-dash

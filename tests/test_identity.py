"""Stage identity: a stage is reused only when everything that can change its result is the same;
data caches follow their sources' contents; splits are explicit and disjoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, tiny_config, zip_config
from tests.test_readers import _audio, _librispeech
from zipper_pl.config import Config, field_paths, load_config, save_config
from zipper_pl.config.sections import MODALITY_NAMES
from zipper_pl.data.corpora.manifest import Record, read_manifest, write_manifest
from zipper_pl.data.corpora.readers import read_jsonl_manifest
from zipper_pl.data.corpora.sources import data_fingerprint
from zipper_pl.data.prepare import corpus_manifests
from zipper_pl.data.tokenizers.audio_tokenizers import AUDIO_TOKENIZERS
from zipper_pl.errors import UserError
from zipper_pl.runs import layout
from zipper_pl.runs.identity import (
    IDENTITY_FILE,
    KINDS,
    LATE_KEYS,
    category,
    read_identity,
    result_config,
)
from zipper_pl.runs.layout import claim_stage, stage_dir, stage_identity
from zipper_pl.runs.provenance import PROVENANCE_FILE
from zipper_pl.stages.chain import pretrain, zip_stage

TINY = ROOT / "experiments" / "tiny"


def schema_keys() -> list[str]:
    return sorted(field_paths(Config))


def uncovered(keys) -> list[str]:
    return [k for k in keys if category(k) is None]


def test_every_schema_key_is_either_result_or_inert():
    """A new config key must be sorted into identity.py's lists, or this fails."""
    assert uncovered(schema_keys()) == []
    # the check is live: a key in no list is reported
    assert uncovered([*schema_keys(), "train.new_knob"]) == ["train.new_knob"]
    # every result key changes at least one kind of stage (a codec's keys: with that codec; a
    # modality's keys: its own tower's pretraining)
    configs = [load_config(None, [f"audio.codec={c}"]) for c in AUDIO_TOKENIZERS]
    configs += [load_config(None, [f"modality={m}"]) for m in MODALITY_NAMES]
    # a key added later enters identities away from its old behaviour (LATE_KEYS: numbers)
    configs += [load_config(None, [f"{k}={_another(v)}"]) for k, v in LATE_KEYS.items()]
    for key in schema_keys():
        assert category(key) != "result" or any(
            key in result_config(c, k, by_content=False) for c in configs for k in KINDS
        ), key


def ident(cfg, kind="pretrain", inputs=None) -> str:
    return stage_identity(cfg, kind, inputs)["fingerprint"]


def test_a_modalitys_keys_name_only_its_own_towers():
    """phonemes.voice shapes the phoneme tower; the text and speech towers (and every existing
    stage folder) keep their identities whatever it is."""
    for m in ("text", "speech"):
        base = load_config(None, [f"modality={m}"])
        assert ident(base) == ident(load_config(None, [f"modality={m}", "phonemes.voice=de"]))
    ph = load_config(None, ["modality=phonemes"])
    assert ident(ph) != ident(load_config(None, ["modality=phonemes", "phonemes.voice=de"]))


@pytest.mark.parametrize(
    "override",
    ["train.max_steps=40", "model.n_layers=3", "train.lr=0.05", "seed=1", "data.seq_len=32",
     "text_tokenizer.vocab_size=200", "train.precision=bf16-mixed", "train.compile=true"],
)  # fmt: skip
def test_pretrain_identity_follows_what_changes_its_result(override):
    base = load_config(TINY / "pretrain_text.yaml")
    assert ident(load_config(TINY / "pretrain_text.yaml", [override])) != ident(base)


@pytest.mark.parametrize(
    "override", ["train.log_every=1", "train.threads=1", "zip.intervals=text:1,speech:1",
                 "runs=elsewhere", "data.aligned_frac=0.1", "train.gate_lr_mult=3"]
)  # fmt: skip
def test_pretrain_identity_ignores_what_cannot_change_it(override):
    base = load_config(TINY / "pretrain_text.yaml")
    assert ident(load_config(TINY / "pretrain_text.yaml", [override])) == ident(base)


@pytest.mark.parametrize(
    ("override", "changes"),
    [("audio.units_k=7", True), ("audio.codec=encodec", True), ("audio.ssl_layer=3", False),
     ("audio.ssl_model=/elsewhere", False), ("audio.encodec_bandwidth=6.0", False)],
)  # fmt: skip
def test_speech_identity_follows_the_active_codecs_keys_only(override, changes):
    """Another codec's keys cannot change a units tower: adding a codec (and its keys) must not
    give every existing stage a new identity."""
    base = load_config(TINY / "pretrain_speech.yaml")
    other = load_config(TINY / "pretrain_speech.yaml", [override])
    assert (ident(other) != ident(base)) == changes


@pytest.mark.parametrize(
    "override", ["train.lr=0.05", "zip.intervals=text:2,speech:1", "data.aligned_frac=0.25",
                 "arch=single", "zip.freeze=none", "eval.max_utterances=3"]
)  # fmt: skip
def test_zip_folder_follows_config_and_towers(override):
    towers = {"text": "a", "speech": "b"}
    base = load_config(TINY / "zip_asr.yaml")
    other = load_config(TINY / "zip_asr.yaml", [override])
    assert stage_dir(other, "zip", towers) != stage_dir(base, "zip", towers)
    assert stage_dir(base, "zip", {**towers, "text": "c"}) != stage_dir(base, "zip", towers)


def _another(value) -> str:
    """A valid ``key=value`` override other than a LATE_KEYS value (a number, a list of numbers
    a mapping or a choice; a share in (0, 1), as a dropout, is halved)."""
    if isinstance(value, bool):  # a switch: the other way
        return str(not value).lower()
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in [*value, 2048]) + "]"
    if isinstance(value, dict):  # a mapping of lists (ablation.variants): one entry more
        return "{another: [seed=1]}"
    if isinstance(value, str):  # a choice (zip.xattn_ffw, eval.engine): another one
        return {"per_modality": "shared", "static": "compiled"}[value]
    return value / 2 if isinstance(value, float) and 0 < value < 1 else value + 1


def test_batches_by_tokens_and_mel_scales_keep_existing_stages_at_their_defaults():
    """data.max_tokens and vocoder.mel_scales came in this phase: at their defaults a stage
    trains as before, so a user's finished zip and vocoder stages keep their folders (a fresh
    demo named its zip stages anew until they were listed here)."""
    base = load_config(TINY / "zip_asr.yaml")
    assert "data.max_tokens" not in result_config(base, "zip")
    budget = load_config(TINY / "zip_asr.yaml", ["data.max_tokens=400"])
    assert result_config(budget, "zip")["data.max_tokens"] == 400
    judge = load_config(TINY / "judge.yaml")  # the judge batches by it too, from 2026-12-05
    assert "data.max_tokens" not in result_config(judge, "judge")
    judge = load_config(TINY / "judge.yaml", ["data.max_tokens=400"])
    assert result_config(judge, "judge")["data.max_tokens"] == 400
    vocoder = load_config(TINY / "vocoder.yaml")
    assert vocoder.vocoder.mel_scales == [1024]
    assert "vocoder.mel_scales" not in result_config(vocoder, "vocoder")
    demo = load_config(TINY.parent / "demo" / "vocoder.yaml")
    assert result_config(demo, "vocoder")["vocoder.mel_scales"] == [256, 512, 1024, 2048]


def test_a_key_added_later_keeps_existing_stages_at_its_old_behaviour():
    """train.patience=0 trains exactly as stages did before the key existed: it stays out of
    their identities (they are reused); another value is a new stage."""
    towers = {"text": "a", "speech": "b"}
    base = load_config(TINY / "zip_asr.yaml")
    assert "train.patience" not in result_config(base, "zip")
    assert set(LATE_KEYS) <= set(field_paths(Config))
    patient = load_config(TINY / "zip_asr.yaml", ["train.patience=2"])
    assert result_config(patient, "zip")["train.patience"] == 2
    assert stage_dir(patient, "zip", towers) != stage_dir(base, "zip", towers)


def test_a_compiled_stage_is_not_an_eager_ones():
    """``train.compile`` was inert, so a compiled run reused an eager stage's folder (and the
    other way round) though compiled steps round differently (docs/performance.md). Eager, the
    default, keeps every existing stage's identity."""
    towers = {"text": "a", "speech": "b"}
    for name, kind in (("pretrain_text", "pretrain"), ("zip_asr", "zip")):
        eager = load_config(TINY / f"{name}.yaml")
        compiled = load_config(TINY / f"{name}.yaml", ["train.compile=true"])
        assert "train.compile" not in result_config(eager, kind)
        assert result_config(compiled, kind)["train.compile"] is True
    assert stage_dir(compiled, "zip", towers) != stage_dir(eager, "zip", towers)


def test_saved_config_names_the_same_stage(tmp_path):
    """A stage's config.yaml (model presets written out) re-runs the same stage."""
    cfg = load_config(TINY / "pretrain_text.yaml", ["model.n_layers=0"])
    resolved = load_config(TINY / "pretrain_text.yaml", ["model.n_layers=2", "model.d_model=32"])
    assert ident(resolved) == ident(cfg)
    save_config(cfg, tmp_path / "c.yaml")
    assert ident(load_config(tmp_path / "c.yaml")) == ident(cfg)


def test_evaluate_identity_follows_its_test_split(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    shutil.copytree(root / "test-clean", root / "test-other")
    common = [f"data.root={root}", "data.corpus=librispeech", "data.valid_splits=dev-clean"]
    a = load_config(TINY / "evaluate.yaml", [*common, "data.test_splits=test-clean"])
    b = load_config(TINY / "evaluate.yaml", [*common, "data.test_splits=test-other"])
    assert stage_dir(a, "eval", {"judge": "j"}) != stage_dir(b, "eval", {"judge": "j"})


def test_every_scale_evaluates_the_stages_its_zip_files_train(tmp_path):
    """`make evaluate` trains missing zip stages from evaluate.yaml: they must be the very
    stages `make zip-asr` / `make zip-tts` made (same identity), not near-copies."""
    towers = {"text": "t", "speech": "s"}
    tree = tmp_path / "LibriSpeech"
    _librispeech(tree)
    for split in ("train-clean-360", "train-other-500"):
        shutil.copytree(tree / "train-clean-100", tree / split)
    for scale in ("tiny", "demo", "s", "l"):
        folder = ROOT / "experiments" / scale
        root = [f"data.root={tree}"] if scale in ("s", "l") else []
        for task in ("asr", "tts"):
            for arch in ("zipper", "single"):
                over = [f"data.task={task}", f"arch={arch}", *root]
                zip_cfg = load_config(folder / f"zip_{task}.yaml", over)
                eval_cfg = load_config(folder / "evaluate.yaml", over)
                assert ident(zip_cfg, "zip", towers) == ident(eval_cfg, "zip", towers), (
                    scale,
                    task,
                    arch,
                )


def test_tree_fingerprint_follows_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _librispeech(a)
    cfg = load_config(TINY / "zip_asr.yaml", ["data.corpus=librispeech", f"data.root={a}"])
    fp = data_fingerprint(cfg.data)
    shutil.copytree(a, b, copy_function=shutil.copy2)  # same files, same times, other root
    moved = load_config(TINY / "zip_asr.yaml", ["data.corpus=librispeech", f"data.root={b}"])
    assert data_fingerprint(moved.data) == fp
    trans = next((a / "test-clean").rglob("*.trans.txt"))
    trans.write_text(trans.read_text().replace("HELLO", "HULLO"))  # a transcript fixed in place
    assert data_fingerprint(cfg.data) != fp
    _audio(a / "train-clean-100" / "19" / "198" / "19-198-0009.flac", 0.3)  # a file added
    assert data_fingerprint(cfg.data) != fp


def _jsonl_corpus(root, text="hello world"):
    recs = {}
    for split in ("train", "dev", "test"):
        recs[split] = []
        for i in range(2):
            _audio(root / "wav" / f"{split}{i}.wav", 0.3, seed=i)
            recs[split].append(Record(f"{split}{i}", str(root / "wav" / f"{split}{i}.wav"),
                                      f"{text} {split} {i}", 0.3, "s"))  # fmt: skip
    return recs


def test_jsonl_edit_is_seen_and_unchanged_sources_are_not_reread(tmp_path):
    root = tmp_path / "corpus"
    for split, recs in _jsonl_corpus(root).items():
        write_manifest(root / f"{split}.jsonl", recs)
    over = ["data.corpus=jsonl", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.train_splits=train", "data.valid_splits=dev",
            "data.test_splits=test"]  # fmt: skip
    cfg = load_config(TINY / "zip_asr.yaml", over)
    first = corpus_manifests(cfg)
    stamp = first["test"].stat().st_mtime_ns
    assert corpus_manifests(cfg) == first and first["test"].stat().st_mtime_ns == stamp
    rows = (root / "test.jsonl").read_text().replace("hello world test 0", "fixed words")
    (root / "test.jsonl").write_text(rows)
    second = corpus_manifests(cfg)
    assert second["test"] != first["test"]
    assert read_manifest(second["test"])[0].text == "fixed words"


def test_one_jsonl_file_needs_split_fields(tmp_path):
    recs = _jsonl_corpus(tmp_path)
    one = tmp_path / "all.jsonl"
    write_manifest(one, [r for rs in recs.values() for r in rs])
    with pytest.raises(UserError, match=r'"split" field.*own file') as e:
        read_jsonl_manifest(one, ["train"])
    assert len(str(e.value).splitlines()) == 1
    rows = [json.loads(x) for x in one.read_text().splitlines()]
    for row in rows:
        row["split"] = row["id"][:-1]
    one.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r.id for r in read_jsonl_manifest(one, ["test"])] == ["test0", "test1"]
    with pytest.raises(UserError, match="no records of split valid"):
        read_jsonl_manifest(one, ["valid"])


def test_an_id_in_two_splits_is_refused(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    over = ["data.corpus=librispeech", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
            "data.valid_splits=dev-clean", "data.test_splits=dev-clean"]  # fmt: skip
    with pytest.raises(UserError, match="in both the valid and the test splits"):
        corpus_manifests(load_config(TINY / "zip_asr.yaml", over))


def test_explicit_folder_of_another_experiment_is_refused(tmp_path):
    cfg = load_config(TINY / "pretrain_text.yaml", [f"out={tmp_path / 'x'}"])
    other = load_config(TINY / "pretrain_text.yaml", [f"out={tmp_path / 'x'}", "train.lr=0.5"])
    with claim_stage(tmp_path / "x", "t", stage_identity(cfg, "pretrain")) as todo:
        assert todo
    assert read_identity(tmp_path / "x")["fingerprint"] == ident(cfg)
    claim = claim_stage(tmp_path / "x", "t", stage_identity(other, "pretrain"))
    with pytest.raises(UserError, match="holds another experiment"), claim:
        pass


def test_changed_settings_build_new_stages_and_same_ones_reuse(data_root, tiny_towers, tmp_path):
    """make zip-asr, then with train.lr=0.05: two zip folders; a third identical run trains
    nothing. The towers pretrained for 3 steps are not a 20-step tower either."""
    runs = tiny_towers["runs"]
    a = zip_stage(zip_config(data_root, tiny_towers, "", "train.max_steps=2"))
    b = zip_stage(zip_config(data_root, tiny_towers, "", "train.max_steps=2", "train.lr=0.05"))
    assert a != b and a.parent == b.parent == runs / "tiny-embedded"
    stamp = (b / "model.safetensors").stat().st_mtime_ns
    again = zip_stage(zip_config(data_root, tiny_towers, "", "train.max_steps=2", "train.lr=0.05"))
    assert again == b and (b / "model.safetensors").stat().st_mtime_ns == stamp
    for folder in (a, b):
        rec = read_identity(folder)
        assert rec["inputs"]["text"] == read_identity(tiny_towers["text"])["fingerprint"]
        prov = json.loads((folder / PROVENANCE_FILE).read_text())
        assert prov["versions"]["torch"] and prov["cpu"] and "git_dirty" in prov
        # "AMD EPYC" names several generations: family, model and kernel-picking ISA flags too
        assert {"cpu_vendor", "cpu_family", "cpu_model", "cpu_isa"} <= set(prov)
        assert len(prov["lock_sha256"]) == 16  # the requirements.lock `make setup` installs
    assert (a / IDENTITY_FILE).is_file()
    longer = tiny_config(data_root, runs, "pretrain_text.yaml", "train.max_steps=4")
    assert stage_dir(longer, "pretrain") != tiny_towers["text"]
    assert pretrain(longer) != tiny_towers["text"]


def test_cli_refuses_one_jsonl_file_without_splits_in_one_line(tmp_path):
    recs = _jsonl_corpus(tmp_path)
    one = tmp_path / "all.jsonl"
    write_manifest(one, [r for rs in recs.values() for r in rs])
    r = subprocess.run(
        [sys.executable, "-m", "zipper_pl", "data", str(TINY / "pretrain_speech.yaml"),
         "data.corpus=jsonl", f"data.root={one}", f"data.cache_dir={tmp_path / 'c'}"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "own file" in lines[0] and '"split" field' in lines[0]


def test_the_data_fingerprint_is_computed_once_for_sections_reading_the_same_sources(
    tmp_path, monkeypatch
):
    """A 1M-file tree was walked once per experiment file of a chain (~4 x 12 s to name it):
    sections that differ only in how they batch share one walk (benchmarks/bench_scale.py)."""
    walks: list[str] = []
    monkeypatch.setattr(layout, "_DATA_FP", {})
    monkeypatch.setattr(layout, "data_fingerprint", lambda d: walks.append(d.root) or "fp")
    base = ["data.corpus=librispeech", f"data.root={tmp_path}"]
    for extra in ([], ["data.batch_size=3"], ["data.seq_len=64", "data.max_tokens=900"]):
        layout.data_fingerprint_of(load_config(TINY / "zip_asr.yaml", [*base, *extra]))
    assert len(walks) == 1
    layout.data_fingerprint_of(load_config(TINY / "zip_asr.yaml", [*base, "data.test_splits=x"]))
    assert len(walks) == 2  # other sources: walked again

"""``audio.codec=hubert``: k-means units over a hidden layer of a (tiny, random) HuBERT saved as
safetensors; the hub path offline, pickle refusal, the k-means converter and a make run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.cluster import KMeans
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    HubertConfig,
    HubertModel,
    SeamlessM4TFeatureExtractor,
    Wav2Vec2BertConfig,
    Wav2Vec2BertModel,
    Wav2Vec2FeatureExtractor,
)

from tests.conftest import ROOT, run_make, tiny_config
from zipper_pl.data.corpora.manifest import Record
from zipper_pl.data.tokenizers.audio_tokenizers import (
    AUDIO_TOKENIZERS,
    AudioTokenizer,
    AudioTokenizerConfig,
    build_audio_tokenizer,
)
from zipper_pl.data.tokenizers.ssl_units import SSLUnitsTokenizer
from zipper_pl.data.tokens.audio_cache import fit_audio_tokenizer
from zipper_pl.errors import UserError
from zipper_pl.runs.layout import stage_identity

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}


def save_tiny_hubert(folder: Path, masked: bool = False, seed: int = 0) -> Path:
    """A random HuBERT at 50 frames/s (3 convs, total stride 320), 2 layers of width 32.
    ``masked``: the large models' kind (layer-norm convs, normalised input, attention mask)."""
    cfg = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if masked else "group",
        do_stable_layer_norm=masked,
    )
    torch.manual_seed(seed)
    HubertModel(cfg).save_pretrained(folder)
    fe = Wav2Vec2FeatureExtractor(do_normalize=masked, return_attention_mask=masked)
    fe.save_pretrained(folder)
    return folder


def save_tiny_w2v_bert(folder: Path) -> Path:
    """A random w2v-BERT 2.0 (conformer on 80-mel fbank frames stacked in pairs: 50/s)."""
    cfg = Wav2Vec2BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        output_hidden_size=32,
        conv_depthwise_kernel_size=3,
        left_max_position_embeddings=8,
        right_max_position_embeddings=8,
    )
    torch.manual_seed(0)
    Wav2Vec2BertModel(cfg).save_pretrained(folder)
    SeamlessM4TFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl")
    return {
        "group": save_tiny_hubert(root / "group"),
        "masked": save_tiny_hubert(root / "masked", masked=True),
        "w2v-bert": save_tiny_w2v_bert(root / "w2v-bert"),
    }


def cfg(folder: Path, **kw) -> AudioTokenizerConfig:
    kw = {"ssl_layer": 2, "device": "cpu", **kw}  # ssl_layer 2: the tiny model's last layer
    return AudioTokenizerConfig(codec="hubert", ssl_model=str(folder), units_k=8, **kw)


def pool() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    return [
        np.concatenate([0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t), rng.normal(0, 0.05, 4000)])
        .astype(np.float32)
        for i in range(6)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(models) -> SSLUnitsTokenizer:
    tok = build_audio_tokenizer(cfg(models["group"]))
    assert isinstance(tok, SSLUnitsTokenizer) and tok.needs_fit
    tok.fit(pool())
    return tok


def test_registered_with_its_config_keys():
    assert AUDIO_TOKENIZERS["hubert"] is SSLUnitsTokenizer
    c = AudioTokenizerConfig(codec="hubert")
    assert c.sample_rate == 16000
    assert (c.ssl_model, c.ssl_layer, c.ssl_centroids) == ("facebook/hubert-base-ls960", 6, "")


def test_fit_encode_save_load_round_trip(fitted, tmp_path):
    waves = [*pool()[:2], np.zeros(100, np.float32), np.zeros(0, np.float32)]
    out = fitted.encode(waves)
    lengths = fitted.model._get_feat_extract_output_lengths(torch.tensor([len(w) for w in waves]))
    assert [len(o) for o in out[:2]] == lengths[:2].tolist()  # 12000 samples -> 37 frames
    assert [len(o) for o in out[2:]] == [1, 1]  # shorter than one frame: padded to one
    assert all(o.dtype == np.uint16 and o.max() < 8 for o in out)
    assert fitted.frame_rate == 50 and fitted.vocab_size == 8
    fitted.save(tmp_path)
    back = AudioTokenizer.load(tmp_path)
    assert isinstance(back, SSLUnitsTokenizer) and back.fingerprint() == fitted.fingerprint()
    for a, b in zip(back.encode(waves), out, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match=r"audio\.codec=encodec"):
        fitted.decode(out[0])


@pytest.mark.parametrize("kind", ["group", "masked", "w2v-bert"])
def test_layer_n_is_the_n_th_layer_output(models, kind):
    """The hidden_states[n] of transformers 5 (fairseq's output_layer: no final norm)."""
    ref = AutoModel.from_pretrained(models[kind]).eval()
    fe = AutoFeatureExtractor.from_pretrained(models[kind])
    wave = pool()[0]
    with torch.no_grad():
        x = fe(wave, sampling_rate=16000, return_tensors="pt")
        hidden = ref(**x, output_hidden_states=True).hidden_states
    valid = int(x["attention_mask"].sum()) if "attention_mask" in x else None  # w2v-BERT pads
    # the last layer only where transformers 4 and 5 agree (4 normed it in stable-norm models)
    for n in (0, 1, 2) if kind == "group" else (0, 1):
        tok = SSLUnitsTokenizer(cfg(models[kind], ssl_layer=n))
        torch.testing.assert_close(tok.features([wave])[0], hidden[n][0, :valid])


@pytest.mark.parametrize("kind", ["group", "masked", "w2v-bert"])
def test_batched_tokens_equal_one_at_a_time(models, kind):
    rng = np.random.default_rng(1)
    lengths = [16000, 16000, 12345, 7000, 16000, 41000, 300]
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in lengths]
    tok = SSLUnitsTokenizer(cfg(models[kind], batch_seconds=2.0))
    tok.piece_samples = 32000  # 41000 samples: two pieces (100 s in real use)
    tok.fit(waves)
    batch_sizes: list[int] = []
    tok.model.register_forward_pre_hook(
        lambda _m, _a, kw: batch_sizes.append(kw[tok.input_name].shape[0]), with_kwargs=True
    )
    together = tok.encode(waves)
    # unmasked: only the equal-length files share a forward; masked: padded batches
    assert max(batch_sizes) == (2 if kind == "group" else 3)
    for w, t in zip(waves, together, strict=True):
        np.testing.assert_array_equal(tok.encode([w])[0], t)


def test_supplied_centroids(models, tmp_path):
    c = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
    np.save(tmp_path / "km.npy", c)
    tok = SSLUnitsTokenizer(cfg(models["group"], ssl_centroids=str(tmp_path / "km.npy")))
    assert not tok.needs_fit
    wave = pool()[1]
    want = torch.cdist(tok.features([wave])[0], torch.from_numpy(c)).argmin(1).numpy()
    np.testing.assert_array_equal(tok.encode([wave])[0], want)
    # cached like a fitted one; a centroids file changed in place is refused, not reused
    rec = [Record(id="a", audio=None, text="", duration=0.0, speaker="s")]
    fit_audio_tokenizer(rec, tok, tmp_path / "tok", progress=False)
    fit_audio_tokenizer(rec, tok, tmp_path / "tok", progress=False)
    np.save(tmp_path / "km.npy", c[::-1])
    with pytest.raises(UserError, match=r"ssl_centroids=.*changed"):
        AudioTokenizer.load(tmp_path / "tok")
    for bad, match in [
        (c[:4], r"4 centroids but audio\.units_k=8: set audio\.units_k=4"),
        (c[:, :31], r"need float centroids \[K, 32\]"),
        (np.array([{"a": 1}], dtype=object), r"no readable \.npy"),
    ]:
        np.save(tmp_path / "bad.npy", bad, allow_pickle=True)
        with pytest.raises(UserError, match=match):
            SSLUnitsTokenizer(cfg(models["group"], ssl_centroids=str(tmp_path / "bad.npy")))


def test_fingerprint_follows_weights_layer_and_centroids(models, tmp_path):
    np.save(tmp_path / "km.npy", np.eye(8, 32, dtype=np.float32))
    km = {"ssl_centroids": str(tmp_path / "km.npy")}
    base = SSLUnitsTokenizer(cfg(models["group"], **km))
    assert SSLUnitsTokenizer(cfg(models["group"], **km)).fingerprint() == base.fingerprint()
    assert SSLUnitsTokenizer(cfg(models["group"], ssl_layer=1, **km)).fingerprint() != (
        base.fingerprint()
    )
    np.save(tmp_path / "km2.npy", 2 * np.eye(8, 32, dtype=np.float32))
    km2 = SSLUnitsTokenizer(cfg(models["group"], ssl_centroids=str(tmp_path / "km2.npy")))
    assert km2.fingerprint() != base.fingerprint()
    # the same folder elsewhere is the same tokenizer; other weights are another
    moved = shutil.copytree(models["group"], tmp_path / "moved")
    assert SSLUnitsTokenizer(cfg(moved, **km)).fingerprint() == base.fingerprint()
    base.save(tmp_path / "tok")
    state = load_file(moved / "model.safetensors")
    name = next(k for k in state if k.endswith("weight"))
    state[name] = state[name] + 0.01
    save_file(state, moved / "model.safetensors", metadata={"format": "pt"})
    assert SSLUnitsTokenizer(cfg(moved, **km)).fingerprint() != base.fingerprint()
    # a saved tokenizer whose model changed in place is refused (its units would mean others)
    (tmp_path / "tok" / "audio_tokenizer.json").write_text(
        (tmp_path / "tok" / "audio_tokenizer.json")
        .read_text()
        .replace(str(models["group"]), str(moved))
    )
    with pytest.raises(UserError, match=r"other weights"):
        AudioTokenizer.load(tmp_path / "tok")


def test_pickle_only_folder_is_refused(models, tmp_path):
    shutil.copy(models["group"] / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"never read")
    with pytest.raises(UserError, match=r"pytorch_model\.bin, a pickle .*save_pretrained"):
        SSLUnitsTokenizer(cfg(tmp_path))
    with pytest.raises(UserError, match=r"no folder and no hub id"):
        SSLUnitsTokenizer(cfg(tmp_path / "missing"))


def test_offline_hub_id_is_one_line_naming_the_key(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "zipper_pl", "pretrain", "experiments/tiny/pretrain_speech.yaml",
         "audio.codec=hubert", "audio.ssl_model=facebook/hubert-base-ls960",
         f"runs={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}",
         f"data.cache_dir={tmp_path / 'cache'}", "train.accelerator=cpu"],
        capture_output=True, text=True, cwd=ROOT, env={**OFFLINE, "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    assert "audio.ssl_model=<folder with config.json and model.safetensors>" in msg
    assert not (tmp_path / "data").exists()  # stopped before any corpus work


def test_kmeans_converter_needs_consent_and_writes_float32(tmp_path):
    km = KMeans(n_clusters=4, n_init=1, random_state=0)
    km.fit(np.random.default_rng(0).normal(size=(64, 3)))
    joblib.dump(km, tmp_path / "km4.bin")
    script = [sys.executable, str(ROOT / "scripts" / "kmeans_to_npy.py")]
    args = [str(tmp_path / "km4.bin"), str(tmp_path / "km4.npy")]
    r = subprocess.run([*script, *args], capture_output=True, text=True)
    assert r.returncode == 2 and "pickle" in r.stderr and "trust" in r.stderr
    assert not (tmp_path / "km4.npy").exists()
    r = subprocess.run([*script, *args, "--trust-pickle"], capture_output=True, text=True)
    assert r.returncode == 0 and "audio.units_k=4" in r.stdout, r.stderr
    got = np.load(tmp_path / "km4.npy", allow_pickle=False)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, km.cluster_centers_.astype(np.float32))


def test_make_pretrain_speech_with_hubert_units(models, data_root, tmp_path):
    args = (
        f"audio.ssl_model={models['group']} audio.ssl_layer=2 data.cache_dir={data_root / 'cache'}"
    )
    r = run_make("pretrain-speech", "SCALE=tiny", "MAX_STEPS=3", "CODEC=hubert",
                 f"ARGS={args} train.accelerator=cpu", f"RUNS={tmp_path / 'runs'}",
                 f"DATA_ROOT={data_root}", env=OFFLINE)  # fmt: skip
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    (stage,) = (tmp_path / "runs").glob("tiny-embedded/pretrain-speech-hubert-steps3-*")
    assert (stage / "model.safetensors").is_file()
    assert f"ssl_model: {models['group']}" in (stage / "config.yaml").read_text()
    tok = AudioTokenizer.load(next(stage.rglob("ssl_kmeans.npz")).parent)
    assert isinstance(tok, SSLUnitsTokenizer) and tok.vocab_size == 32  # tiny: units_k 32


def test_stage_identity_follows_the_model_contents_not_its_path(models, tmp_path):
    """A copied model folder is the same speech tower; weights changed in place are another."""

    def identity(folder: Path) -> str:
        over = ["audio.codec=hubert", f"audio.ssl_model={folder}", "audio.ssl_layer=2"]
        c = tiny_config(tmp_path, tmp_path / "runs", "pretrain_speech.yaml", *over)
        return stage_identity(c, "pretrain")["fingerprint"]

    copy = Path(shutil.copytree(models["group"], tmp_path / "copy"))
    assert identity(copy) == identity(models["group"])
    weights = copy / "model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    save_file({**state, name: state[name] + 1.0}, weights)
    assert identity(copy) != identity(models["group"])

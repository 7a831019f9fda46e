"""Inference: KV-cache decoding equals repeated full forwards; beam, sampling, scoring, stops."""

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import tiny
from kosmos import defaults
from kosmos.data import tokenizer as tokenizer_lib
from kosmos.infer import engine as engine_lib
from kosmos.infer import prompt as prompt_lib
from kosmos.infer import sampling
from kosmos.model import multimodal

VARIANTS = [("magneto", "xpos"), ("magneto", "sinusoidal"), ("llama", "rope")]
TOK = tokenizer_lib.ByteTokenizer()
BANNED = engine_lib.default_banned_ids(TOK)


def _config(family="magneto", positions="xpos"):
  config = defaults.base()
  config.model = tiny.model_config(family, "resampler", positions)
  config.model.decoder.vocab_size = tokenizer_lib.BYTE_VOCAB_SIZE
  config.model.decoder.max_len = 128
  return config


def _model(config, seed=0):
  return multimodal.Multimodal(config.model, rngs=nnx.Rngs(seed))


STEPS = 6  # one max_new_tokens (and prompt length bucket 64) everywhere: fewer compiles


@functools.lru_cache(maxsize=None)
def _setup(family="magneto", positions="xpos", seed=0):
  """(config, model, engine), shared by tests so compiled functions are reused."""
  config = _config(family, positions)
  model = _model(config, seed)
  return config, model, engine_lib.Engine(model, config, tokenizer=TOK, length_multiple=64)


def _png(seed):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _prompts():
  rng = np.random.default_rng(1)
  return [
      [{"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}, {"text": "a cat"}],
      [{"text": "Two pictures:"}, {"image": _png(0)}, {"text": " and"}, {"image": _png(1)},
       {"text": " here"}],
      [{"text": "text only, a longer prompt than the others"}],
  ]


@nnx.jit
def _last_logits(model, batch):
  logits, _ = model(batch)
  return jnp.take_along_axis(logits, (batch["lengths"] - 1)[:, None, None], axis=1)[:, 0]


def _full(model, config, encoded, length=96, banned=BANNED):
  """Log-softmax of the next token after `encoded` from one full forward (no cache); the
  `banned` ids (those generation never emits) are excluded from the softmax."""
  batch = prompt_lib.collate([encoded], image_size=config.model.vision.image_size, pad_id=0,
                             length=length, num_images=2)
  batch["positions"] = np.arange(length, dtype=np.int32)[None]
  batch["segment_ids"] = (np.arange(length)[None] < batch["lengths"][:, None]).astype(np.int32)
  logits = sampling.ban(_last_logits(model, batch), banned)
  return np.asarray(jax.nn.log_softmax(logits))[0]


def _greedy_reference(model, config, encoded, steps):
  tokens = list(encoded.tokens)
  out = []
  for _ in range(steps):
    nxt = int(np.argmax(_full(model, config, prompt_lib.Encoded(tokens, encoded.images))))
    out.append(nxt)
    tokens.append(nxt)
    if nxt == TOK.eos_id:
      break
  return out


@pytest.mark.parametrize("family,positions", VARIANTS)
def test_cached_greedy_equals_repeated_full_forwards_batched_and_alone(family, positions):
  config, model, engine = _setup(family, positions)
  prompts = _prompts()
  batched = engine.generate(prompts, max_new_tokens=STEPS, batch_size=4)
  for prompt, got in zip(prompts, batched):
    want = _greedy_reference(model, config, engine.encode(prompt), STEPS)
    assert got.tokens == want
    if positions == "xpos":  # one variant suffices for batch invariance (saves compiles)
      alone = engine.generate([prompt], max_new_tokens=STEPS, batch_size=1)[0]
      assert alone.tokens == got.tokens
      np.testing.assert_allclose(alone.logprob, got.logprob, rtol=1e-4)
  assert len({tuple(g.tokens) for g in batched}) > 1  # rows are not all the same


def _full_logprob(model, config, enc, tokens_out):
  want, tokens = 0.0, list(enc.tokens)
  for t in tokens_out:
    want += _full(model, config, prompt_lib.Encoded(tokens, enc.images))[t]
    tokens.append(t)
  return want


def _batch(engine, prompts):
  return engine._put(prompt_lib.collate([engine.encode(p) for p in prompts], image_size=16,
                                        pad_id=0, length=64, num_images=2, batch_size=4))


def test_logprob_and_stop_ids():
  config, model, engine = _setup()
  prompts = _prompts()
  greedy = engine.generate(prompts, max_new_tokens=STEPS, batch_size=4)
  for prompt, g in zip(prompts, greedy):
    np.testing.assert_allclose(g.logprob, _full_logprob(model, config, engine.encode(prompt),
                                                        g.tokens), rtol=1e-4)
  # Sampled tokens vary; make a later one a stop id: the same draw ends at its first use
  # and keeps it, the rest is padding.
  batch = _batch(engine, prompts)
  key = jax.random.PRNGKey(4)
  hot = engine._options(max_new_tokens=STEPS, temperature=1.0)
  sampled = [int(t) for t in engine.decode_fn(engine.state, batch, key, options=hot)["tokens"][0]]
  j = next(j for j in range(1, STEPS) if sampled[j] not in sampled[:j])
  stop = engine._options(max_new_tokens=STEPS, temperature=1.0, stop_ids=(sampled[j],))
  out = engine.decode_fn(engine.state, batch, key, options=stop)
  assert int(out["num_tokens"][0]) == j + 1
  assert list(np.asarray(out["tokens"][0])) == sampled[:j + 1] + [0] * (STEPS - 1 - j)


def test_beam_search():
  config, model, engine = _setup()
  prompts = _prompts()
  greedy = engine.generate(prompts, max_new_tokens=STEPS, batch_size=4)
  beam1 = engine.beam_fn(engine.state, _batch(engine, prompts),
                         options=engine._options(max_new_tokens=STEPS, num_beams=1))
  for row, g in enumerate(greedy):
    n = int(beam1["num_tokens"][row, 0])
    assert list(np.asarray(beam1["tokens"][row, 0, :n])) == g.tokens
  # Three beams: each hypothesis' log-prob is the full-forward log-prob of its tokens, the
  # best is at least as likely as greedy's (length_penalty 0), batching changes nothing.
  beams3 = engine.generate(prompts, max_new_tokens=STEPS, num_beams=3, batch_size=4)
  for prompt, b3, g in zip(prompts, beams3, greedy):
    enc = engine.encode(prompt)
    np.testing.assert_allclose(b3.logprob, _full_logprob(model, config, enc, b3.tokens),
                               rtol=1e-4, atol=1e-4)
    assert b3.score >= g.logprob - 1e-4
  alone = engine.generate(prompts[1:2], max_new_tokens=STEPS, num_beams=3, batch_size=1)[0]
  assert alone.tokens == beams3[1].tokens
  # Length penalty 1: hypotheses ranked by logprob / length, distinct, best first.
  out = engine.beam_fn(engine.state, _batch(engine, prompts), options=engine._options(
      max_new_tokens=STEPS, num_beams=3, length_penalty=1.0))
  for row in range(3):
    scores = np.asarray(out["scores"][row])
    logp, n = np.asarray(out["logprob"][row]), np.asarray(out["num_tokens"][row])
    np.testing.assert_allclose(scores, logp / np.maximum(n, 1), rtol=1e-5)
    assert np.all(np.diff(scores) <= 1e-6)
    assert len({tuple(np.asarray(out["tokens"][row, k])) for k in range(3)}) == 3


def test_sampling_greedy_limits_seeds_and_top_k():
  config, model, engine = _setup()
  prompts = _prompts()
  run = lambda **kw: [g.tokens for g in engine.generate(prompts, max_new_tokens=STEPS,
                                                        batch_size=4, **kw)]
  greedy = run()
  assert run(temperature=1.0, top_k=1, seed=5) == greedy
  assert run(temperature=1e-4, seed=5) == greedy
  a, b, c = (run(temperature=2.0, top_k=3, seed=s) for s in (7, 7, 8))
  assert a == b and a != c
  # top-k 3: every sampled token is among the 3 most likely under the full forward.
  for prompt, tokens_out in zip(prompts, a):
    enc = engine.encode(prompt)
    tokens = list(enc.tokens)
    for t in tokens_out:
      logp = _full(model, config, prompt_lib.Encoded(tokens, enc.images))
      assert t in np.argsort(-logp)[:3]
      tokens.append(t)


def test_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  np.testing.assert_array_equal(np.asarray(sampling.top_p_filter(logits, 0.7)) > -1e29,
                                [[True, True, False, False]])
  np.testing.assert_array_equal(np.asarray(sampling.top_p_filter(logits, 0.5)) > -1e29,
                                [[True, False, False, False]])
  np.testing.assert_array_equal(np.asarray(sampling.top_k_filter(logits, 2)) > -1e29,
                                [[True, True, False, False]])
  assert np.asarray(sampling.ban(logits, [1, 99]))[0, 1] < -1e29  # 99 is outside the vocab


def test_stop_strings_truncate():
  assert engine_lib.cut_at_stop_strings("a dog.\nQuestion: x", ["\n", "Question"]) == "a dog."
  assert engine_lib.cut_at_stop_strings("abc", ["", "z"]) == "abc"
  config, model, engine = _setup()
  full = engine.generate(_prompts(), max_new_tokens=STEPS, batch_size=4)[0]
  text = full.text
  assert len(text) >= 3
  stop = text[2:4]
  cut = engine.generate(_prompts(), max_new_tokens=STEPS, batch_size=4, stop_strings=[stop])[0]
  assert cut.text == text[:text.find(stop)]
  assert cut.tokens == full.tokens


@pytest.mark.parametrize("family,positions", [VARIANTS[0], VARIANTS[2]])
def test_score_equals_full_forward_log_softmax(family, positions):
  config, model, engine = _setup(family, positions)
  prompts = _prompts()
  candidates = [[" yes", " no", " a long answer"], [" x"], [" dog", " cat"]]
  got = engine.score(prompts, candidates, batch_size=4)
  for prompt, cands, scores in zip(prompts, candidates, got):
    enc = engine.encode(prompt)
    for cand, (total, mean) in zip(cands, scores):
      ids = TOK.encode(cand)
      logp = [_full(model, config, prompt_lib.Encoded(enc.tokens + ids[:j], enc.images),
                    banned=())[t]
              for j, t in enumerate(ids)]
      want = sum(logp)
      np.testing.assert_allclose(total, want, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(mean, want / len(ids), rtol=1e-4, atol=1e-4)


def test_prompt_encoding_and_errors():
  config = _config()
  n = multimodal.tokens_per_image(config.model)
  enc = prompt_lib.encode([{"text": "hi"}, {"image": _png(2)}, {"text": "!"}], TOK,
                          image_size=16, tokens_per_image=n)
  assert enc.tokens == ([TOK.bos_id, *TOK.encode("hi"), TOK.image_start_id] +
                        [TOK.image_slot_id] * n + [TOK.image_end_id, *TOK.encode("!")])
  assert enc.images[0].shape == (16, 16, 3) and enc.images[0].dtype == np.uint8
  no_boundaries = defaults.tokenizer()
  no_boundaries.update(image_start_id=-1, image_end_id=-1)  # LLaVA's layout
  llava = tokenizer_lib.ByteTokenizer(no_boundaries)
  enc = prompt_lib.encode([{"image": _png(2)}, {"image": _png(3)}, {"text": "!"}], llava,
                          image_size=16, tokens_per_image=n)
  assert enc.tokens == [TOK.bos_id] + [TOK.image_slot_id] * (2 * n) + TOK.encode("!")
  with pytest.raises(ValueError, match="valid: 'text' or 'image'"):
    prompt_lib.encode([{"audio": b""}], TOK, image_size=16, tokens_per_image=n)
  with pytest.raises(ValueError, match="uint8"):
    prompt_lib.encode([{"image": np.zeros((4, 4, 3), np.float32)}], TOK, image_size=16,
                      tokens_per_image=n)
  _, _, engine = _setup()
  # bos + 120 bytes + 4 new tokens fit max_len 128 (padding stops at 128 - 4) ...
  assert 1 <= len(engine.generate([[{"text": "x" * 120}]], max_new_tokens=4)[0].tokens) <= 4
  with pytest.raises(ValueError, match="max_len"):  # ... 4 more bytes do not
    engine.generate([[{"text": "x" * 124}]], max_new_tokens=4)


@pytest.mark.slow
def test_sharded_2x2x2_matches_single_device():
  from kosmos import sharding
  config, _, single = _setup("llama", "rope")
  prompts = _prompts()
  want = single.generate(prompts, max_new_tokens=STEPS, batch_size=4)
  want_beam = single.generate(prompts, max_new_tokens=STEPS, num_beams=3, batch_size=4)
  want_score = single.score(prompts, [[" yes", " no"]] * 3, batch_size=4)
  config = _config("llama", "rope")
  config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = sharding.make_mesh(config.mesh)
  model = multimodal.create_sharded(config.model, mesh, config.sharding_rules, seed=0)
  kernel = model.decoder.blocks[0].attn.q_proj.kernel.value
  assert len(kernel.sharding.device_set) == 8
  sharded = engine_lib.Engine(model, config, mesh=mesh, tokenizer=TOK, length_multiple=64)
  got = sharded.generate(prompts, max_new_tokens=STEPS, batch_size=4)
  assert [g.tokens for g in got] == [w.tokens for w in want]
  got_beam = sharded.generate(prompts, max_new_tokens=STEPS, num_beams=3, batch_size=4)
  assert [g.tokens for g in got_beam] == [w.tokens for w in want_beam]
  got_score = sharded.score(prompts, [[" yes", " no"]] * 3, batch_size=4)
  np.testing.assert_allclose(np.asarray(got_score), np.asarray(want_score), rtol=1e-4, atol=1e-4)

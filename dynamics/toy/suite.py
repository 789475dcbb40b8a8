"""The built-in model organism: a tiny Pythia-architecture suite trained here, on CPU.

:func:`build_toy_suite` generates an English corpus around the TSE phenomena
(:mod:`dynamics.toy.corpus`), builds a whitespace word-level tokenizer over the grammar's
lexicon, trains a GPT-NeoX (Pythia's architecture: rotary attention on a quarter of each
head, parallel residual, GELU MLP with a 4x intermediate size, untied embeddings) from
scratch with AdamW and warmup + cosine decay on packed sentences separated by
``<|endoftext|>``, and saves checkpoints as a local suite::

    OUT/step0/ step1/ step2/ step4/ ... step32/ step40/ step80/ ... step600/   (default: 22)
        each: config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...
    OUT/heldout.txt   held-out sentences, one per line, each after <|endoftext|>
    OUT/suite.json    config, seed, schedule, corpus description, losses, timings

The checkpoint schedule has Pythia's shape (:func:`checkpoint_steps`): step 0, the powers
of two below the checkpoint interval, then every interval up to the final step (Pythia:
0, 1, ..., 512, then every 1000 to 143000). A step-``N`` checkpoint holds the weights after
``N`` optimizer updates.

Determinism: every random choice derives from ``ToyConfig.seed`` (corpus: Python's
``random`` seeded with ``"<seed>/train"``; weights: ``torch.manual_seed(seed)``; batches:
``numpy.random.default_rng(seed)``), torch runs with deterministic algorithms and a fixed
thread count, so the same config on the same machine gives bitwise identical weights.
A different ``threads`` value (or another CPU type) may change the last bits. One thread is
the default: these matrices are too small to gain much from two, and on a busy machine
OpenMP barriers made two threads 1.6-8x *slower* per step in our measurements.

Default size and cost (measured on the project's 2-core machine, one thread): 2 layers,
width 128 (512 MLP neurons per layer), 470k parameters, 600 steps of 32 x 64 tokens;
about 75 s in all. The model reaches 100% on the full TSE benchmark (none of whose
sentences is in its training corpus) from about 51% at step 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dynamics.config.options import config_dict
from dynamics.errors import UserInputError
from dynamics.execution.progress import progress_bar
from dynamics.toy.config import HELDOUT_FILE, SUITE_FILE, ToyConfig
from dynamics.toy.corpus import corpus_description, generate_sentences, lexicon_words, tse_sentences
from store.safe_files import atomic_write_bytes, fresh_directory

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
UNK_TOKEN = "<unk>"
#: Special tokens, in id order (Pythia's ids for the first two).
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)
SUITE_FORMAT = "dynamics-toy-suite/1"


def checkpoint_steps(steps: int, every: int) -> list[int]:
    """Pythia's schedule shape: 0, the powers of two below ``every``, then every ``every``
    up to ``steps`` (``steps`` itself always included).

    ``checkpoint_steps(143000, 1000)`` is Pythia's 154 revisions;
    ``checkpoint_steps(600, 40)`` (the toy's default) is 0, 1, 2, 4, ..., 32, 40, 80, ..., 600
    (22 in all).
    """
    if steps < 1 or every < 1:
        raise UserInputError(f"steps={steps}, every={every}: expected positive integers")
    log_part = [0] + [2**k for k in range(steps.bit_length()) if 2**k < every and 2**k <= steps]
    linear = list(range(every, steps + 1, every))
    return sorted(set(log_part + linear + [steps]))


# ---------------------------------------------------------------------------- tokenizer
def vocabulary() -> list[str]:
    """The token strings in id order: the special tokens, then the grammar's words sorted."""
    return [*SPECIAL_TOKENS, *sorted(lexicon_words())]


def build_tokenizer(words: Sequence[str] | None = None) -> Any:
    """A whitespace word-level ``PreTrainedTokenizerFast`` (BOS = EOS = ``<|endoftext|>``).

    Args:
        words: Token strings in id order, starting with :data:`SPECIAL_TOKENS`; default
            :func:`vocabulary`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(vocabulary() if words is None else words)
    if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise UserInputError(f"a toy vocabulary starts with {', '.join(SPECIAL_TOKENS)}")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def encode_stream(sentences: Sequence[str], index: dict[str, int]) -> np.ndarray:
    """``EOS s1 EOS s2 ... EOS sN EOS`` as token ids (int64); an unknown word raises."""
    eos = index[EOS_TOKEN]
    ids = [eos]
    try:
        for sentence in sentences:
            ids.extend(index[w] for w in sentence.split(" "))
            ids.append(eos)
    except KeyError as exc:
        raise UserInputError(f"word {exc.args[0]!r} is not in the toy vocabulary") from exc
    return np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------- model
def toy_model_config(config: ToyConfig, vocab_size: int) -> Any:
    """The ``GPTNeoXConfig`` of the toy model (Pythia's defaults otherwise)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden_size,
        hidden_act="gelu",
        rotary_pct=0.25,
        use_parallel_residual=True,
        max_position_embeddings=config.context,
        tie_word_embeddings=False,
        bos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
    )


def learning_rate_factor(step: int, config: ToyConfig) -> float:
    """Multiplier of the peak learning rate for update ``step`` (1-based): linear warmup,
    then cosine decay to ``min_lr_ratio`` at the final step."""
    warmup = min(config.warmup_steps, config.steps)
    if step <= warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms, restored on exit."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic, warn_only=old_warn_only)


def _optimizer(model: torch.nn.Module, config: ToyConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95), eps=1e-8)


def _windows(stream: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    return torch.from_numpy(stream[starts[:, None] + np.arange(length)[None, :]])


def heldout_loss(model: torch.nn.Module, stream: np.ndarray, context: int) -> float:
    """Mean next-token loss (nats) over the held-out stream cut into windows of ``context``."""
    n = (len(stream) - 1) // context
    if n < 1:  # shorter than one window: the whole stream is the window
        n, context = 1, len(stream) - 1
    batch = _windows(stream, np.arange(n) * context, context + 1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    model.train(was_training)
    return float(loss)


# ---------------------------------------------------------------------------- the suite
def _prepare_out_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--out {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserInputError(
                f"--out {path}: the directory is not empty; choose a new one or pass --overwrite to replace its suite"
            )
        for child in path.iterdir():  # only what a build writes; anything else stays
            if not (
                re.fullmatch(r"\.?step\d+(\.partial\.?\w*)?", child.name) or child.name in (SUITE_FILE, HELDOUT_FILE)
            ):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()  # a file, or a link (never what it points to)
    path.mkdir(parents=True, exist_ok=True)


def _save_checkpoint(model: Any, tokenizer: Any, out: Path, step: int) -> None:
    """Write ``out/step{step}`` atomically (a temporary directory renamed into place)."""
    from transformers.utils import logging as hf_logging

    tmp = fresh_directory(out, f".step{step}.partial.")  # a new directory: nothing planted is written through
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar for the build, not one per checkpoint
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    os.replace(tmp, out / f"step{step}")


def build_toy_suite(out_dir: str | os.PathLike | None = None, config: ToyConfig | None = None) -> Path:
    """Train the toy model and save its checkpoints as a local suite.

    Args:
        out_dir: Where the suite goes; default ``config.out``.
        config: Sizes, schedule and seed; default :class:`ToyConfig()`.

    Returns:
        The suite's directory.

    Raises:
        UserInputError: ``out_dir`` is a file, or a non-empty directory without ``overwrite``.
    """
    config = config or ToyConfig()
    out = Path(config.out if out_dir is None else out_dir).expanduser()
    _prepare_out_dir(out, config.overwrite)
    started = time.perf_counter()
    corpus = _make_corpus(config)
    atomic_write_bytes(out / HELDOUT_FILE, "".join(f"{EOS_TOKEN} {s}\n" for s in corpus.heldout).encode("utf-8"))
    timings = {"corpus": time.perf_counter() - started}
    log.info(
        "toy corpus: %d sentences, %d tokens, vocabulary %d", len(corpus.train), len(corpus.stream), len(vocabulary())
    )
    schedule = checkpoint_steps(config.steps, config.checkpoint_every)
    model, losses = _train(config, corpus, schedule, out)
    timings["training"] = time.perf_counter() - started - timings["corpus"]
    timings["total"] = time.perf_counter() - started
    _write_manifest(out, config, schedule, model, corpus, losses, timings)
    log.info(
        "toy suite %s: %d checkpoints, final held-out loss %.3f, %.0f s",
        out,
        len(schedule),
        losses["heldout"][config.steps],
        timings["total"],
    )
    return out


@dataclass(frozen=True)
class _Corpus:
    train: list[str]
    heldout: list[str]
    stream: np.ndarray  # EOS-separated token ids of the training sentences
    heldout_stream: np.ndarray


def _make_corpus(config: ToyConfig) -> _Corpus:
    """Training sentences (without TSE's, if asked) and held-out ones (also without training's)."""
    excluded = tse_sentences() if config.exclude_tse else frozenset()
    train = generate_sentences(config.sentences, seed=f"{config.seed}/train", exclude=excluded)
    heldout = generate_sentences(config.heldout_sentences, seed=f"{config.seed}/heldout", exclude=excluded | set(train))
    index = {w: i for i, w in enumerate(vocabulary())}
    corpus = _Corpus(train, heldout, encode_stream(train, index), encode_stream(heldout, index))
    if len(corpus.stream) < config.context + 2:
        raise UserInputError(
            f"--sentences {config.sentences}: too few tokens for one window of --context {config.context}"
        )
    return corpus


def _train(
    config: ToyConfig, corpus: _Corpus, schedule: list[int], out: Path
) -> tuple[Any, dict[str, dict[int, float]]]:
    """Train from scratch, saving a checkpoint at every scheduled step; returns the final
    model and the mean training loss since the previous checkpoint and the held-out loss,
    per checkpoint."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    eos = SPECIAL_TOKENS.index(EOS_TOKEN)
    # Windows start at an EOS, as a scored sentence does (it is conditioned on EOS).
    starts = np.flatnonzero(corpus.stream[: len(corpus.stream) - config.context - 1] == eos)
    rng = np.random.default_rng(config.seed)
    losses: dict[str, dict[int, float]] = {"train": {}, "heldout": {}}
    with _torch_settings(config.threads):
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(toy_model_config(config, len(vocabulary())), dtype=torch.float32)
        model.train()
        optimizer = _optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s + 1, config))
        losses["heldout"][0] = heldout_loss(model, corpus.heldout_stream, config.context)
        _save_checkpoint(model, tokenizer, out, 0)
        running: list[float] = []
        with progress_bar(total=config.steps, desc="toy training", unit="step", disable=not config.progress) as bar:
            for step in range(1, config.steps + 1):
                batch = _windows(corpus.stream, rng.choice(starts, size=config.batch_size), config.context + 1)
                logits = model(input_ids=batch[:, :-1]).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                running.append(loss.item())
                bar.update(1)
                if step in schedule:
                    losses["train"][step] = float(np.mean(running))
                    losses["heldout"][step] = heldout_loss(model, corpus.heldout_stream, config.context)
                    running = []
                    bar.set_postfix(loss=f"{losses['train'][step]:.3f}", heldout=f"{losses['heldout'][step]:.3f}")
                    _save_checkpoint(model, tokenizer, out, step)
    return model, losses


def _write_manifest(
    out: Path,
    config: ToyConfig,
    schedule: list[int],
    model: Any,
    corpus: _Corpus,
    losses: dict[str, dict[int, float]],
    timings: dict[str, float],
) -> None:
    import transformers

    manifest = {
        "format": SUITE_FORMAT,
        "config": config_dict(config) | {"out": str(out)},
        "seed": config.seed,
        "checkpoint_steps": schedule,
        "schedule": "0, powers of two below checkpoint_every, then every checkpoint_every to steps",
        "model": {
            "architecture": "gpt_neox",
            "parameters": sum(p.numel() for p in model.parameters()),
            "mlp_neurons_per_layer": 4 * config.hidden_size,
            "layers": config.layers,
        },
        "tokenizer": {
            "type": "WordLevel + Whitespace",
            "vocab_size": len(vocabulary()),
            "special_tokens": list(SPECIAL_TOKENS),
        },
        "corpus": corpus_description()
        | {
            "train_sentences": len(corpus.train),
            "distinct_train_sentences": len(set(corpus.train)),
            "train_tokens": int(len(corpus.stream)),
            "tse_sentences_excluded": config.exclude_tse,
            "heldout_file": HELDOUT_FILE,
            "heldout_sentences": config.heldout_sentences,
        },
        "tokens_seen": config.steps * config.batch_size * config.context,
        "train_loss": {str(k): v for k, v in losses["train"].items()},
        "heldout_loss": {str(k): v for k, v in losses["heldout"].items()},
        "seconds": timings,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    atomic_write_bytes(out / SUITE_FILE, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))

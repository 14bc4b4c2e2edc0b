"""Data: a corpus that ships with Python, a byte tokenizer, and batches as pure functions.

    tokens = load_tokens()                     # or load_tokens("my_book.txt")
    x, y = get_batch(tokens, step=7, seed=0, batch_size=16, block_size=128, rank=1, world_size=2)

Nothing is downloaded. The default corpus is the Python Language Reference as it ships inside
every CPython installation (`pydoc_data.topics`, the text `help()` shows), so it is the same on
every machine with the same Python version.

Data parallelism rests on one property here: the global batch of step s depends only on (seed, s),
and rank r of K takes rows [r B/K, (r+1) B/K) of it. K ranks together therefore see exactly the
batch one process would, and a resumed run sees exactly what an uninterrupted one would have.
Each rank builds only its own rows, so its cost per step does not grow with the world size, and
a data file is memory-mapped once per process, not read into memory.
The learner's linear-regression data lives here too (`linear_data`).
"""

import ast
import functools
import mmap
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

VOCAB_SIZE = 256  # one token per byte: no tokenizer to train or download


def encode(text: str) -> Tensor:
    """UTF-8 bytes as token ids, (n,) uint8."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(ids: Tensor | list[int]) -> str:
    """Token ids back to text; a multi-byte character cut in half becomes U+FFFD."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@functools.cache
def default_corpus() -> str:
    """The Python Language Reference (about 0.5 MB), or the stdlib's docstrings if it is missing."""
    try:
        from pydoc_data.topics import topics  # stripped from some minimal Python builds

        return "\n\n".join(topics[key] for key in sorted(topics))
    except ImportError:
        return _stdlib_docstrings()


def _stdlib_docstrings(limit: int = 1 << 20) -> str:
    """Module, class and function docstrings of the standard library, in file order."""
    root, parts, size = Path(sysconfig.get_paths()["stdlib"]), [], 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc)
                    size += len(doc)
        if size >= limit:
            break
    return "\n\n".join(parts)


def load_tokens(path: str | Path | None = None) -> Tensor:
    """All tokens of a text file, or of the default corpus; (n,) uint8, shared: do not modify.

    Read once per process: later calls for the same unchanged file return the same tensor. A
    file is memory-mapped, not read: the operating system pages in the parts that batches touch,
    and every process on a node shares those pages, so a corpus larger than memory works too.
    """
    if path is None:
        return _default_tokens()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    stat = path.stat()  # a file changed since it was mapped is mapped again
    return _map_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _default_tokens() -> Tensor:
    return encode(default_corpus())


@functools.lru_cache(maxsize=4)
def _map_file(path: str, size: int, mtime_ns: int) -> Tensor:
    if size == 0:
        raise ValueError(f"the data file {path} is empty")
    with open(path, "rb") as f:
        # Copy-on-write: the tensor is writable, as torch.frombuffer wants, and writes (there are
        # none) would stay in this process instead of reaching the file.
        pages = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    return torch.frombuffer(pages, dtype=torch.uint8)  # keeps `pages` alive as long as it lives


def split(tokens: Tensor, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """(train, val): the last val_fraction of the text is held out."""
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def rank_slice(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s contiguous share of a global batch: rows [r B/K, (r+1) B/K)."""
    if len(batch) % world_size:
        raise ValueError(f"a batch of {len(batch)} does not divide among {world_size} ranks")
    per_rank = len(batch) // world_size
    return batch[rank * per_rank : (rank + 1) * per_rank]


def batch_rows(
    tokens: Tensor,
    step: int,
    seed: int,
    batch_size: int,
    block_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """This rank's rows of the global batch of step `step`, (batch_size // world_size,
    block_size + 1), in the tokens' dtype: inputs, and one more token for the last target.

    The global batch is a pure function of (seed, step): the start of each of its batch_size
    rows is drawn from a generator of its own, never the global random state. Drawing all the
    starts costs little (8192 of them take about 30 us); only this rank's rows are then gathered,
    so a rank's cost hardly grows with the world size.
    """
    if len(tokens) <= block_size:  # a row is block_size + 1 tokens
        raise ValueError(f"{len(tokens)} tokens are too few for blocks of {block_size}")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=g)  # (B,)
    mine = rank_slice(starts, rank, world_size)  # (B/K,)
    return tokens[mine[:, None] + torch.arange(block_size + 1)]  # (B/K, T+1), one gather


def get_batch(
    tokens: Tensor,
    step: int,
    seed: int,
    batch_size: int,
    block_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Tensor, Tensor]:
    """This rank's inputs and targets for step `step`: (batch_size // world_size, block_size)
    each, int64; y is x shifted by one token. Rank r of K gets rows [r B/K, (r+1) B/K) of the
    global batch (global_batch), so K ranks together see exactly the batch one process would."""
    rows = batch_rows(tokens, step, seed, batch_size, block_size, rank, world_size).long()
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def global_batch(
    tokens: Tensor, step: int, seed: int, batch_size: int, block_size: int
) -> tuple[Tensor, Tensor]:
    """The whole batch of step `step`: inputs and targets, (batch_size, block_size) each."""
    return get_batch(tokens, step, seed, batch_size, block_size)


def linear_data(
    m: int = 100,
    theta: tuple[float, ...] = (1.0, 2.0),
    noise: float = 0.5,
    seed: int = 0,
    x_range: tuple[float, float] = (-2.0, 2.0),
) -> tuple[Tensor, Tensor]:
    """m noisy points of y = theta_0 + theta_1 x_1 + ...: (X with a ones column (m, n), y (m,)).

    Features are uniform in x_range. A range away from 0, such as (0, 3), couples theta_0 and
    theta_1: the loss becomes a long tilted valley, where the learning rate matters more.
    """
    g = torch.Generator().manual_seed(seed)
    low, high = x_range
    features = torch.rand(m, len(theta) - 1, generator=g) * (high - low) + low  # (m, n - 1)
    X = torch.cat([torch.ones(m, 1), features], dim=1)
    y = X @ torch.tensor(theta) + noise * torch.randn(m, generator=g)
    return X, y

"""FullyShardedDataParallel against one process, against torch's fully_shard, and its traffic.

Each test trains the same model from the same start on K ranks (each with its share of the
batch) and in one process (with the whole batch), and compares every parameter after every step,
gathered whole with full_state_dict(). The toy model has each case a sharded model must get
right: a weight tied inside a unit, one tied between a unit and the rest of the model, a unit
used twice, a frozen unit, a frozen parameter inside a unit, a unit used on even steps only, a
parameter used by some ranks only (and sometimes by none), one never used, and parameters
outside every unit.
"""

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import minidp
from minidp.flat import bytes_sent
from minidp.model import GPT, Block, GPTConfig

pytestmark = pytest.mark.usefixtures("no_orphans")

BATCH = 12  # divides among 1, 2 and 3 ranks, and into 2 micro-batches each


class Layer(nn.Module):
    """A unit: `extra` serves only the rows a mask selects (on some ranks none), `unused` none."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.extra = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)

    def forward(self, h, mask=None):
        h = torch.tanh(self.lin(h))
        if mask is not None and bool(mask.any()):
            h = h + mask * self.extra(h)  # rows outside the mask add no gradient
        return h


class Pair(nn.Module):
    """A unit whose two linear maps share one weight."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, h):
        return torch.tanh(self.b(torch.tanh(self.a(h))))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(6, 8)  # outside every unit: replicated
        self.pair = Pair()
        self.shared = Layer()  # used twice in each forward
        self.frozen = Layer().requires_grad_(False)
        self.sometimes = Layer()  # used on even steps only
        self.mixed = Layer()
        self.mixed.lin.bias.requires_grad_(False)  # frozen inside a trainable unit
        self.decode = nn.Linear(8, 8)
        self.decode.weight = self.sometimes.lin.weight  # tied to a unit's: stays replicated
        self.head = nn.Linear(8, 3)

    def forward(self, x, step, mask):
        h = self.pair(torch.tanh(self.encode(x)))
        h = self.shared(self.frozen(self.shared(h, mask=mask)))
        if step % 2 == 0:
            h = self.sometimes(h)
        return self.head(torch.tanh(self.decode(self.mixed(h, mask=mask))))


def _toy_loss(model, step, rows):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    mask = ((torch.arange(BATCH) + step) % 7 == 0)[rows, None].to(dtype)  # rows of the batch
    return F.mse_loss(model(x[rows].to(dtype), step, mask), y[rows].to(dtype))


def _gpt():
    return GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32))


def _gpt_loss(model, step, rows):
    idx = torch.randint(256, (BATCH, 17), generator=torch.Generator().manual_seed(step))
    return model(idx[rows, :-1], idx[rows, 1:])[1]


MODELS = {"toy": (Toy, _toy_loss, (Pair, Layer)), "gpt": (_gpt, _gpt_loss, (Block,))}
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
}


def _units(model_name: str, with_root: bool):
    classes = MODELS[model_name][2]
    if not with_root:
        return classes
    return lambda m: isinstance(m, classes) or m.__class__ in (Toy, GPT)  # the rest: a unit too


def _step(model, optimizer, loss_fn, step, rows, micro_batches):
    optimizer.zero_grad()
    for chunk in torch.arange(rows.start, rows.stop).chunk(micro_batches):
        (loss_fn(model, step, chunk) / micro_batches).backward()
    optimizer.step()


def _compare(model_name, optimizer_name, dtype, with_root=False, micro_batches=1, **fsdp):
    """Max |parameter difference| to one process over 4 steps; the full state, for other ranks."""
    rank, K = dist.get_rank(), dist.get_world_size()
    make, loss_fn, _ = MODELS[model_name]
    torch.manual_seed(0)
    reference = make().to(dtype)
    torch.manual_seed(rank)  # every rank starts different: the wrapper must fix that
    model = minidp.FullyShardedDataParallel(
        make().to(dtype), units=_units(model_name, with_root), **fsdp
    )
    cls, kwargs = OPTIMIZERS[optimizer_name]
    optimizer, ref_optimizer = (
        cls(model.parameters(), **kwargs),
        cls(reference.parameters(), **kwargs),
    )
    per_rank, worst = BATCH // K, 0.0
    for step in range(4):
        _step(
            model,
            optimizer,
            loss_fn,
            step,
            slice(rank * per_rank, (rank + 1) * per_rank),
            micro_batches,
        )
        _step(reference, ref_optimizer, loss_fn, step, slice(0, BATCH), 1)
        full = model.full_state_dict()
        for name, value in reference.state_dict().items():
            worst = max(worst, (full[name].double() - value.double()).abs().max().item())
    return worst, full


def _check(results, tolerance):
    worst, first = results[0]
    for other_worst, full in results:
        assert other_worst == worst
        for name, value in full.items():  # every rank holds the same model
            assert torch.equal(value, first[name]), name
    assert worst <= tolerance, f"{worst:.2e} from the single process"


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("model_name", ["toy", "gpt"])
def test_fsdp_equals_one_process(world_size, model_name):
    _check(minidp.launch(_compare, world_size, model_name, "adamw", torch.float64), 1e-12)


@pytest.mark.parametrize("model_name", ["toy", "gpt"])
def test_fsdp_with_the_rest_of_the_model_a_unit_too(model_name):
    _check(minidp.launch(_compare, 3, model_name, "sgd", torch.float64, True), 1e-12)


def test_fsdp_accumulates_over_micro_batches_without_prefetch():
    results = minidp.launch(_compare, 2, "toy", "adamw", torch.float64, False, 2, prefetch=False)
    _check(results, 1e-12)


def _dtypes(compute_dtype):
    """Shard, gradient and all-gather dtypes, and the distance to one float32 process."""
    worst, _ = _compare("gpt", "sgd", torch.float32, compute_dtype=compute_dtype)
    torch.manual_seed(0)
    model = minidp.FullyShardedDataParallel(_gpt(), units=(Block,), compute_dtype=compute_dtype)
    model.events, seen = [], set()
    qkv = model.module.blocks[0].attn.qkv
    qkv.register_forward_pre_hook(
        lambda module, args: seen.add((module.weight.dtype, args[0].dtype))
    )
    _gpt_loss(model, 0, slice(0, 6)).backward()
    params = list(model.parameters())
    shards = {p.dtype for p in params} | {p.grad.dtype for p in params if p.numel()}
    gathered = {e.nbytes for e in model.events if e.kind == "all-gather"}
    return worst, shards, gathered, {4 * u.layout.padded_numel for u in model.units}, seen


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_compute_keeps_float32_shards_and_gradients(compute_dtype):
    for worst, shards, gathered, fp32_bytes, seen in minidp.launch(_dtypes, 2, compute_dtype):
        assert shards == {torch.float32}  # master weights and their gradients
        assert gathered == {n // 2 for n in fp32_bytes}  # half the bytes on the wire
        assert seen == {(compute_dtype, compute_dtype)}  # a unit computes in 16 bits
        assert worst <= 1e-3  # four SGD steps computed in 16 bits, next to float32's


def _against_torch(compute_dtype):
    """Parameters of ours and of torch's fully_shard (blocks, then the root) after 4 steps."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    rank, K = dist.get_rank(), dist.get_world_size()
    dtype = torch.float64 if compute_dtype is None else torch.float32
    torch.manual_seed(0)
    theirs = _gpt().to(dtype)
    mesh = init_device_mesh("cpu", (K,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=dtype)
    for block in theirs.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(theirs, mesh=mesh, mp_policy=policy)
    torch.manual_seed(0)
    ours = minidp.FullyShardedDataParallel(
        _gpt().to(dtype), units=(Block,), compute_dtype=compute_dtype
    )
    rows = slice(rank * BATCH // K, (rank + 1) * BATCH // K)
    # SGD for bf16: Adam divides by the gradient's RMS, so a rounding in a near-zero gradient
    # can move a parameter by a whole learning rate.
    cls, kwargs = OPTIMIZERS["adamw" if compute_dtype is None else "sgd"]
    for model in (ours, theirs):
        optimizer = cls(model.parameters(), **kwargs)
        for step in range(4):
            _step(model, optimizer, _gpt_loss, step, rows, 1)
    full = ours.full_state_dict()
    return max(
        (full[name] - p.full_tensor()).abs().max().item() for name, p in theirs.named_parameters()
    )


@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16])
def test_fsdp_equals_torch_fully_shard(compute_dtype):
    tolerance = 1e-12 if compute_dtype is None else 1e-3  # bf16: where each casts differs
    for worst in minidp.launch(_against_torch, 2, compute_dtype):
        assert worst <= tolerance


def _elements_sent(prof, world_size: int) -> float:
    """Elements one rank sent in the profiled collectives, each as a ring would send them."""
    per, sent = (world_size - 1) / world_size, 0.0
    for e in prof.events():
        numel = sum(torch.Size(s).numel() for s in e.input_shapes if s)
        if e.name == "gloo:all_gather":  # input: this rank's shard of K
            sent += per * world_size * numel
        elif e.name == "gloo:all_to_all":  # our reduce-scatter on gloo
            sent += per * numel
        elif e.name == "gloo:all_reduce":
            sent += 2 * per * numel
    return sent


def _traffic():
    """Elements sent in one training step by torch's DDP, our FSDP and our ZeRO-1, counted by
    torch's profiler, and what FSDP's and ZeRO's own records say (in float32 elements)."""
    rank, K = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * BATCH // K, (rank + 1) * BATCH // K)
    torch.manual_seed(0)
    runs = {
        "ddp": nn.parallel.DistributedDataParallel(_gpt()),
        "fsdp": minidp.FullyShardedDataParallel(_gpt(), units=_units("gpt", with_root=True)),
        "zero": _gpt(),
        "zero+ddp": minidp.DistributedDataParallel(_gpt()),
    }
    counted, recorded = {}, {}
    for name, model in runs.items():
        if name.startswith("zero"):
            optimizer = minidp.ZeroRedundancyOptimizer(
                model.parameters(), torch.optim.AdamW, average_gradients=name == "zero"
            )
        else:
            optimizer = torch.optim.AdamW(model.parameters())
        _step(model, optimizer, _gpt_loss, 0, rows, 1)  # warm-up: prefetch learns the order
        (model if name == "fsdp" else optimizer).events = []
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            _step(model, optimizer, _gpt_loss, 1, rows, 1)
        counted[name] = _elements_sent(prof, K)
        events = getattr(model if name == "fsdp" else optimizer, "events", None)
        recorded[name] = bytes_sent(events, K) / 4 if events is not None else None
    return counted, recorded


@pytest.mark.parametrize("world_size", [2, 3])
def test_traffic_fsdp_one_and_a_half_ddp_zero_one_ddp(world_size):
    counted, recorded = minidp.launch(_traffic, world_size)[0]
    assert recorded["fsdp"] == pytest.approx(counted["fsdp"])  # the records tell the truth
    assert recorded["zero"] == pytest.approx(counted["zero"])
    # Two all-gathers and a reduce-scatter vs one all-reduce (= two halves); flags and padding
    # add a fraction of a percent.
    assert counted["fsdp"] / counted["ddp"] == pytest.approx(1.5, rel=0.01)
    assert counted["zero"] / counted["ddp"] == pytest.approx(1.0, rel=0.01)
    # Under DDP, ZeRO only all-gathers, after DDP's all-reduce: as torch's does (it broadcasts).
    assert counted["zero+ddp"] / counted["ddp"] == pytest.approx(1.5, rel=0.01)


def _misuse(case):
    torch.manual_seed(0)
    if case == "class":
        minidp.FullyShardedDataParallel(_gpt(), units=(Block, nn.Conv2d))
    elif case == "predicate":
        minidp.FullyShardedDataParallel(_gpt(), units=lambda m: False)
    elif case == "twice":
        model = minidp.FullyShardedDataParallel(_gpt(), units=(Block,))
        minidp.FullyShardedDataParallel(model.module, units=(Block,))
    elif case == "dtype":
        model = _gpt()
        model.blocks[0].mlp.double()
        minidp.FullyShardedDataParallel(model, units=(Block,))


@pytest.mark.parametrize(
    "case, message",
    [
        ("class", "units: no submodule of GPT is a Conv2d"),
        ("predicate", "units: the predicate matched no submodule of GPT"),
        ("twice", "this module is already wrapped in FullyShardedDataParallel"),
        ("dtype", "unit Block: its parameters need one dtype and device"),
    ],
)
def test_misuse_is_one_clear_error(case, message):
    with pytest.raises(minidp.WorkerError) as error:
        minidp.launch(_misuse, 1, case)
    assert f"ValueError: {message}" in str(error.value)


def _quietly():
    """Training, checkpoints and reloading with every warning an error."""
    warnings.simplefilter("error")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = minidp.FullyShardedDataParallel(_gpt(), units=(Block,), compute_dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for step in range(2):
        _step(model, optimizer, _gpt_loss, step, slice(rank * 6, rank * 6 + 6), 2)
    with torch.no_grad():
        model.eval()
        _gpt_loss(model, 0, slice(0, 2))
    model.load_full_state_dict(model.full_state_dict())
    zero = minidp.ZeroRedundancyOptimizer(_gpt().parameters(), torch.optim.AdamW)
    zero.step()
    return True


def test_no_warnings_in_normal_use():
    assert minidp.launch(_quietly, 2) == [True, True]


def _resume_at_another_world_size(state):
    """Load a single process's full state at K ranks: the same loss, the same next step."""
    rank, K = dist.get_rank(), dist.get_world_size()
    model = minidp.FullyShardedDataParallel(_gpt().double(), units=(Block,))
    model.load_full_state_dict(state)
    loss = _gpt_loss(model, 5, slice(0, BATCH)).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(model, optimizer, _gpt_loss, 5, slice(rank * BATCH // K, (rank + 1) * BATCH // K), 1)
    return loss, model.full_state_dict()


def test_full_state_dict_loads_at_any_world_size():
    torch.manual_seed(3)
    reference = _gpt().double()
    state = {name: value.clone() for name, value in reference.state_dict().items()}
    loss = _gpt_loss(reference, 5, slice(0, BATCH)).item()
    _step(
        reference, torch.optim.SGD(reference.parameters(), lr=0.1), _gpt_loss, 5, slice(0, BATCH), 1
    )
    for their_loss, full in minidp.launch(_resume_at_another_world_size, 3, state):
        assert their_loss == pytest.approx(loss, abs=1e-12)
        assert full.keys() == reference.state_dict().keys()
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(full[name], value, rtol=0, atol=1e-12)


def _timeline(prefetch):
    """Per block: when its forward ended, and when the next block's all-gather started."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = minidp.FullyShardedDataParallel(_gpt(), units=(Block,), prefetch=prefetch)
    for step in range(2):  # the second forward knows the order of the first
        model.events = []
        _gpt_loss(model, step, slice(rank * 6, rank * 6 + 6)).backward()
    gathers = sorted(e.start for e in model.events if e.kind == "all-gather")
    forwards = sorted((e.end, e.index) for e in model.events if e.kind == "forward")
    freed = all(u.flat.untyped_storage().nbytes() == 0 for u in model.units)
    return gathers, forwards, freed


def test_prefetch_starts_the_next_gather_while_a_unit_computes():
    (gathers, forwards, freed), _ = minidp.launch(_timeline, 2, True)
    assert freed  # after backward no unit holds its whole parameters
    first_block_done = forwards[0][0]
    assert gathers[1] < first_block_done  # block 1's gather started before block 0 finished
    (gathers, forwards, freed), _ = minidp.launch(_timeline, 2, False)
    assert freed and gathers[1] > forwards[0][0]  # without prefetch: only once it is needed

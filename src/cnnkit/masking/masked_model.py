"""``masked(model)``: run an ordinary CNN on a padded batch and get, for every sample, what it alone gives.

Mechanism
---------
:class:`MaskedModel` runs the unmodified model under a :class:`~torch.overrides.TorchFunctionMode`. The
mode knows, for every tensor derived from the padded input, each sample's valid extent (``sizes``,
computed with :mod:`cnnkit.shapes`), which of its dimensions are the spatial ones, and whether it is zero
outside the extents ("clean"; the record holds the tensor's version counter, so an in-place change, also one
made through a view, makes it dirty again). Every torch function called during the forward pass goes
through the mode, which binds the call's arguments to the function's published signature
(:mod:`torch.overrides`) and applies the rule registered for that function object. The rules
(:mod:`cnnkit.masking.rules`; the records and the dispatch: :mod:`cnnkit.masking.state`):

{rules}

Ops on tensors that do not derive from the padded input (weights, constants) are not touched. Once every
sample's extent fills the canvas (e.g. after global pooling to 1×1) the tensor is an ordinary tensor.
The output is zeroed outside the extents, so gradients reach only valid positions: weight gradients
equal the sum of per-sample gradients. A forward pass that raises leaves every buffer (running
statistics) as it was, and its error names the op and the module that called it.

Modules whose ops are defined per sample but not on a padded canvas (attention over all positions) run once per
group of samples of one extent, on the valid crop (:mod:`cnnkit.masking.per_sample`): named with
``masked(model, per_sample=...)``, registered with :func:`register_per_sample_module`, or found when an op inside
them is refused (``auto_per_sample``).

New rules: :func:`register_masked_op` (see its example and ``docs/masking.md``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnkit import _ops
from cnnkit.errors import ArgumentTypeError, ShapeError, UnsupportedError
from cnnkit.masking.batch import PaddedBatch
from cnnkit.masking.per_sample import batch_statistics_module, install, register_per_sample_module, resolve, uninstall
from cnnkit.masking.rules import RULES_TEXT, register_masked_op
from cnnkit.masking.state import MaskedContext, bind, canonical_axes

__all__ = ["MaskedContext", "MaskedModel", "bind", "masked", "register_masked_op", "register_per_sample_module"]

__doc__ = __doc__.replace("{rules}", RULES_TEXT)

_MaskedMode = MaskedContext  # the name used before the rules became public


# -- the model wrapper -------------------------------------------------------------------------------------


def _position_tied(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first module whose weights are tied to positions (:data:`cnnkit._ops.POSITION_TIED`), with its name."""
    if not _ops.POSITION_TIED:
        return None
    tied = tuple(_ops.POSITION_TIED)
    for name, m in model.named_modules():
        if isinstance(m, tied):
            return name, m
    return None


class MaskedModel(nn.Module):
    """Runs ``model`` on a :class:`~cnnkit.masking.PaddedBatch` exactly as on each sample alone.

    Created by :func:`masked`; the wrapped model is ``self.model`` (same parameters, no copy).
    """

    def __init__(self, model: nn.Module, sync_batchnorm: bool = False, process_group=None,
                 per_sample: Sequence = (), auto_per_sample: bool = True):
        super().__init__()
        self.model = model
        self.sync_batchnorm = sync_batchnorm
        self.process_group = process_group
        if isinstance(per_sample, (str, type, nn.Module)) or not isinstance(per_sample, (tuple, list)):
            raise ArgumentTypeError(
                "per_sample must be a tuple or list of nn.Module subclasses or module paths, e.g. "
                f"per_sample=('decoder.center',). Received per_sample={per_sample!r}."
            )
        self.per_sample = tuple(per_sample)
        self.auto_per_sample = auto_per_sample
        resolve(model, self.per_sample)  # names and classes checked now
        self._learned: dict[str, None] = {}  # modules found to need a per-sample run (auto_per_sample)
        self._plans: dict = {}  # decisions per function, extents and geometry (plain data, bounded below)
        self._masks: tuple = (None, {})  # (the last call's extents and input, its masks)
        self._checked: int | None = None

    @property
    def per_sample_modules(self) -> tuple[str, ...]:
        """Paths of the modules run once per group of samples of one extent: named, registered or found needed."""
        chosen = resolve(self.model, (*self.per_sample, *self._learned))
        return tuple(name for name, _ in self.model.named_modules() if name in chosen)

    def _group(self):
        if not self.sync_batchnorm:
            return None
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        return self.process_group or dist.group.WORLD

    def _check_model(self) -> None:
        count = sum(1 for _ in self.model.modules())
        if self._checked == count:
            return
        tied = _position_tied(self.model)
        if tied is not None:
            name, m = tied
            raise UnsupportedError(
                f"masked(): module '{name}' ({type(m).__name__}) has weights tied to positions (a locally "
                "connected layer), so a sample of another size has no meaningful output from it; masked() cannot "
                "run it on samples of different sizes. Resize or crop the samples to one size instead."
            )
        for path in list(self._learned):  # a module found earlier that the model no longer has: forget it
            try:
                self.model.get_submodule(path)
            except AttributeError:
                del self._learned[path]
        self._per_sample_modules = resolve(self.model, (*self.per_sample, *self._learned))
        self._checked = count

    def forward(self, batch: PaddedBatch | tuple[Tensor, Tensor], *args, **kwargs):
        """Run the model; a padded output comes back as a :class:`PaddedBatch` with per-sample ``sizes``."""
        if isinstance(batch, tuple) and len(batch) == 2:
            batch = PaddedBatch(*batch)
        if not isinstance(batch, PaddedBatch):
            raise ArgumentTypeError(
                "masked(model) takes a PaddedBatch (see cnnkit.pad_batch) or a (data, sizes) tuple. "
                f"Received {type(batch).__name__}."
            )
        if torch.is_inference_mode_enabled():
            # Inference tensors have no version counter, and masked() reads it to notice in-place changes (through
            # views too): run under no_grad instead. The result is an ordinary tensor without history.
            with torch.inference_mode(False), torch.no_grad():
                data = batch.data.clone() if batch.data.is_inference() else batch.data
                return self.forward(PaddedBatch(data, batch.sizes.clone()), *args, **kwargs)
        sizes = tuple(tuple(s) for s in batch.sizes.tolist())
        canvas = batch.canvas
        if any(not 1 <= s <= c for size in sizes for s, c in zip(size, canvas)):
            raise ShapeError(
                f"every sample's size must be between 1 and the canvas {canvas}. Received sizes={list(sizes)}."
            )
        self._check_model()
        if len(self._plans) > 4096:
            self._plans.clear()
        if not self.auto_per_sample:
            return self._forward_once(batch, sizes, args, kwargs)
        # A refusal inside a module: run that module per sample and try again (buffers and RNG restored).
        rng = _rng_state(batch.data.device)
        learned: list[tuple[str, UnsupportedError]] = []  # in this call, kept only if the call succeeds
        while True:
            try:
                out = self._forward_once(batch, sizes, args, kwargs)
            except UnsupportedError as error:
                path = getattr(error, "_masked_module", None)
                tried, first_error = learned[-1] if learned else (None, None)
                if tried is not None and path is not None and (path == tried or path.startswith(tried + ".")):
                    self._forget(learned)  # running it per sample does not help: report the first refusal
                    raise type(first_error)(
                        f"{first_error} Running module '{tried}' per sample does not help: {error}"
                    ) from None
                if not path or path in self._per_sample_modules or batch_statistics_module(
                        self.model.get_submodule(path)) is not None:
                    self._forget(learned)
                    raise
                learned.append((path, error))
                self._learned[path] = None
                self._checked = None
                self._check_model()
                _set_rng_state(batch.data.device, rng)
                continue
            except Exception as error:
                if not learned:
                    raise
                # a module run per sample failed in another way: keep nothing, and say what was refused first
                self._forget(learned)
                tried, first_error = learned[-1]
                raise type(first_error)(
                    f"{first_error} Running module '{tried}' per sample failed too: {type(error).__name__}: {error}"
                ) from error
            for path, error in learned:
                reason = str(error).removeprefix("masked(): ").split(" [in module")[0]
                warnings.warn(
                    f"masked(): module '{path}' ({type(self.model.get_submodule(path)).__name__}) now runs once per "
                    "group of samples of one extent, on each group's valid crop (exact; one call per extent), "
                    f"because on the padded batch: {reason} This wrapper keeps that choice; "
                    f"masked(model, per_sample=({path!r},)) makes it from the start.", UserWarning, stacklevel=3)
            return out

    def _forget(self, learned: list) -> None:
        for path, _ in learned:
            self._learned.pop(path, None)
        self._checked = None

    def _forward_once(self, batch: PaddedBatch, sizes, args, kwargs):
        # The masks of the last call are kept for the next one with the same extents (as many as one call builds;
        # not across inference mode, whose tensors cannot be saved for backward).
        x = batch.data
        key = (sizes, tuple(x.shape), x.device, x.dtype, torch.is_inference_mode_enabled())
        if self._masks[0] != key:
            self._masks = (key, {})
        mode = MaskedContext(self._group(), self.model, self._plans, self._masks[1])
        # Looked at on every call (not trusted from pad_batch): writes through NumPy or .data skip the version
        # counter, and a batch's sizes may be changed after it was made.
        if mode.is_padded(mode.track(x, sizes)):
            entry = mode.entries[x]
            if x.device.type == "cpu" and x.is_floating_point():
                # One product with the cached 0/1 mask of the padding and the sum of its absolute values (30
                # per-sample .any() took ~1 ms for TinyResNet's batch of 16): 0 only if the padding is zero and
                # no value is NaN or inf (× 0 gives NaN there); anything else goes through the checked zeroing.
                # Zero padding and finite valid values: finite everywhere, so the first window op that reads the
                # padding (max pooling after the stem) needs no NaN check either.
                padding = torch.mul(x.detach(), mode._weights(x)[1], out=_scratch_like(x))
                entry.clean = padding.abs_().sum().item() == 0
                entry.finite = entry.clean and x.dtype in (torch.float32, torch.float64)
            else:
                entry.clean = _zero_outside(x, sizes)
            finite = entry.finite
            x = mode.zeros_outside(x)
            if x is batch.data:  # already zero outside: a view, so that the record is not the caller's tensor's
                x = x.view_as(x)
                mode.track(x, sizes, True, finite=finite)
            mode.entries.pop(batch.data)
        # A forward that raises must leave running statistics as they were (no double update on a fallback).
        saved = [(b, b.clone()) for b in self.model.buffers()] if self.model.training else None
        routed = install(mode, self._per_sample_modules) if self._per_sample_modules else ()
        try:
            with mode:
                out = self.model(x, *args, **kwargs)
        except BaseException:
            if saved:
                with torch.no_grad():
                    for buffer, value in saved:
                        buffer.copy_(value)
            raise
        finally:
            if routed:
                uninstall(routed)
        return _finish(mode, out)

    def extra_repr(self) -> str:
        parts = [f"sync_batchnorm={self.sync_batchnorm}"] if self.sync_batchnorm else []
        if self.per_sample:
            parts.append(f"per_sample={self.per_sample!r}")
        if not self.auto_per_sample:
            parts.append("auto_per_sample=False")
        return ", ".join(parts)


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.random.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


_SCRATCH = threading.local()  # one buffer per thread (a model may serve several threads at once)
_SCRATCH_LIMIT = 1 << 22  # elements (16 MB of float32): larger inputs get a fresh tensor, not a held one


def _scratch_like(x: Tensor) -> Tensor:
    """An uninitialised tensor shaped like ``x``, the same memory on every call of this thread.

    For the input's padding check: a fresh input-sized tensor every step costs page faults on the CPU (the
    allocator hands memory of that size back to the system and the kernel zeroes each page again on first touch:
    ~300–400 faults, 0.5–1 ms of a 30 ms TinyResNet step); the buffer is kept up to ``_SCRATCH_LIMIT`` elements.
    """
    n = x.numel()
    if n > _SCRATCH_LIMIT:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.numel() < n or buffer.dtype != x.dtype or buffer.device != x.device:
        buffer = _SCRATCH.buffer = torch.empty(n, dtype=x.dtype, device=x.device)
    return buffer[:n].view(x.shape)


def _zero_outside(data: Tensor, sizes) -> bool:
    """Whether ``data`` is already zero outside every sample's extent (as :func:`pad_batch` leaves it): on the CPU a
    look at each sample's padding, cheaper than a zeroed copy (whose fresh memory costs page faults)."""
    if data.device.type != "cpu" or len(sizes) * len(sizes[0]) > 64:
        return False
    canvas = data.shape[2:]
    for n, size in enumerate(sizes):
        sample = data[n]
        for axis, (s, c) in enumerate(zip(size, canvas)):
            if s < c and sample.narrow(axis + 1, s, c - s).any():
                return False
    return True


def _finish(mode: MaskedContext, out):
    if isinstance(out, Tensor):
        if out in mode.entries:
            if mode.entries[out].axes != canonical_axes(out.dim()):
                raise UnsupportedError(
                    f"masked(): the model returns a padded tensor of shape {tuple(out.shape)} with its spatial "
                    f"dimensions at {mode.entries[out].axes}; return it as (N, C, *spatial)."
                )
            sizes = mode.entries[out].sizes
            data = mode.zeros_outside(out, check=True)  # its gradient comes from the caller's loss
            return PaddedBatch(data, torch.tensor(sizes, dtype=torch.long, device=data.device))
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_finish(mode, o) for o in out)
    if isinstance(out, dict):
        return type(out)((k, _finish(mode, v)) for k, v in out.items())
    return out


def masked(model: nn.Module, *, sync_batchnorm: bool = False, process_group=None, per_sample: Sequence = (),
           auto_per_sample: bool = True) -> MaskedModel:
    """Wrap ``model`` so that it runs on padded batches as if on each sample alone.

    Args:
        model: An ordinary, unmodified ``nn.Module`` (see the module documentation for the ops covered;
            any other op on a padded tensor raises :class:`~cnnkit.errors.UnsupportedError` naming the op and
            the module that called it; :func:`register_masked_op` adds rules).
        sync_batchnorm: In training mode, reduce batch-norm statistics over all processes of
            ``torch.distributed`` (valid positions only) — a SyncBatchNorm for padded batches. Use plain
            ``nn.BatchNorm*d`` layers in the model.
        process_group: The group to reduce over (default: the world).
        per_sample: Modules (``nn.Module`` subclasses or dotted paths such as ``"decoder.center"``) to run once
            per group of samples of one extent, on each group's valid crop: for modules whose ops are defined
            per sample but not on a padded canvas (attention over all positions). Classes registered with
            :func:`register_per_sample_module` are always run so.
        auto_per_sample: When an op is refused inside a module (not the model itself), run the forward pass
            again with that module run per sample (every buffer and the random number generator restored
            first), and keep that choice for later calls (:attr:`MaskedModel.per_sample_modules`). A module
            holding a batch norm in training mode is never run per sample.

    Returns:
        A :class:`MaskedModel` sharing ``model``'s parameters. Called on a :class:`PaddedBatch` it returns
        a :class:`PaddedBatch` for spatial outputs (``sizes`` = each sample's output extent) and an
        ordinary tensor for outputs without padding (e.g. after global pooling).

    Examples:
        >>> from cnnkit.masking import pad_batch
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU())
        >>> images = [torch.randn(1, 5, 7), torch.randn(1, 8, 4)]
        >>> out = masked(net)(pad_batch(images))
        >>> out.sizes.tolist()
        [[3, 4], [4, 2]]
        >>> torch.allclose(out.unpad()[0], net(images[0][None])[0], atol=1e-6)
        True
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module. Received {type(model).__name__}.")
    return MaskedModel(model, sync_batchnorm=sync_batchnorm, process_group=process_group, per_sample=per_sample,
                       auto_per_sample=auto_per_sample)

"""Long rows on a small GPU: checkpointed layers keep their inputs in host RAM, and run their
MLP over slices of the row.

With every decoder layer checkpointed, what stays on the GPU between forward and backward is
one input per layer (tokens x hidden, 16-bit): 20 GiB for Llama-3.1-8B at 80k tokens. Here
each checkpointed layer's input is copied to pinned host memory as the forward pass leaves
it, on a side CUDA stream so that the copy overlaps the next layers' compute; backward brings
it back, and fetches the previous layer's input while the current one is recomputed.

The layer being recomputed in backward is then the peak, and most of it is the MLP
(tokens x intermediate size, three times over). The MLP treats every token on its own, so
it runs on slices of `MLP_TILE_TOKENS` tokens, each recomputed in its own backward: the same
result, with slice-sized intermediates.

`gradient_checkpointing: auto` turns this on only when checkpointing every layer does not
fit (`fit.py`); `train.offload_activations: true` always. On a CPU there is no second
memory: the copy stands in for the transfer, so the tests cover the same code path.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from . import loading

MLP_TILE_TOKENS = 4096


class HostCopy:
    """One saved layer input: its host copy, and the device copy while it is needed."""

    def __init__(self, host: torch.Tensor, device: torch.device, ready, previous: HostCopy | None):
        self.host, self.device, self.ready, self.previous = host, device, ready, previous
        self.fetched: torch.Tensor | None = None
        self.fetched_ready = None


class HostOffload:
    """saved_tensors_hooks that park a tensor in (pinned) host RAM and bring it back."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.last: HostCopy | None = None

    def pack(self, tensor: torch.Tensor) -> HostCopy:
        if not self.cuda:
            copy = HostCopy(tensor.clone(), tensor.device, None, self.last)
        else:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the tensor is written
            with torch.cuda.stream(self.stream):
                host.copy_(tensor, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            tensor.record_stream(self.stream)  # its memory is not reused before the copy is done
            copy = HostCopy(host, tensor.device, ready, self.last)
        self.last = copy
        return copy

    def fetch(self, copy: HostCopy) -> None:
        """Start bringing `copy` back to the GPU on the side stream."""
        if copy.fetched is not None:
            return
        if not self.cuda:
            copy.fetched = copy.host.clone()
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(copy.ready)
            copy.fetched = copy.host.to(copy.device, non_blocking=True)
            copy.fetched_ready = torch.cuda.Event()
            copy.fetched_ready.record()

    def unpack(self, copy: HostCopy) -> torch.Tensor:
        self.fetch(copy)
        tensor, copy.fetched = copy.fetched, None
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(copy.fetched_ready)
            tensor.record_stream(current)
        # Backward runs the layers in reverse: the one before this one is needed next.
        previous, copy.previous = copy.previous, None
        if previous is not None:
            self.fetch(previous)
        if self.last is copy:
            self.last = None
        return tensor


def _offloading(checkpoint_function, offload: HostOffload):
    def offloaded(*args, **kwargs):
        # Only the checkpoint's own inputs are saved under these hooks: inside the layer the
        # checkpoint's hooks take over (and keep nothing).
        with torch.autograd.graph.saved_tensors_hooks(offload.pack, offload.unpack):
            return checkpoint_function(*args, **kwargs)

    offloaded.offloads = True
    return offloaded


def _tiled(mlp_forward, tile: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[:-1].numel()
        if tokens <= tile or not torch.is_grad_enabled():
            return mlp_forward(x)
        pieces = x.reshape(tokens, x.shape[-1]).split(tile)
        first = checkpoint(mlp_forward, pieces[0], use_reentrant=False)
        if not isinstance(first, torch.Tensor):  # a mixture of experts' (output, router logits): not sliced
            return mlp_forward(x)
        out = torch.cat([first, *(checkpoint(mlp_forward, piece, use_reentrant=False) for piece in pieces[1:])])
        return out.view(*x.shape[:-1], out.shape[-1])

    forward.tiled = True
    return forward


def offload_layer_inputs(model, device: torch.device, on: bool = True, tile: int = MLP_TILE_TOKENS) -> int:
    """Switch host offloading (and MLP slices) on or off for the checkpointed decoder layers;
    call after `loading.checkpoint_layers`. Returns how many layers offload."""
    offload = HostOffload(device)
    count = 0
    for layer in loading.decoder_layers(model):
        function = getattr(layer, "_gradient_checkpointing_func", None)
        original = getattr(layer, "_checkpointing_without_offload", function)
        mlp = getattr(layer, "mlp", None)
        if on and layer.gradient_checkpointing and function is not None:
            layer._checkpointing_without_offload = original
            layer._gradient_checkpointing_func = _offloading(original, offload)
            if mlp is not None and not getattr(mlp.forward, "tiled", False):
                mlp.forward = _tiled(mlp.forward, tile)
            count += 1
            continue
        if function is not None and getattr(function, "offloads", False):
            layer._gradient_checkpointing_func = original
        if mlp is not None and getattr(mlp.forward, "tiled", False):
            del mlp.forward  # back to the class's forward
    return count


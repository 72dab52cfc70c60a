"""What crosses between pipeline ranks: layer memories packed into one flat buffer, sent with autograd-aware
point-to-point operations.

A message holds ``G, S, has_global, T, temp_valid`` of one layer (the wavefront) or of every layer (the naive
hand-off), so the two sides can never disagree on how many messages there are or in which order they come.
Its gradient travels back as one buffer of the same layout (the flags' entries are zero).

``Link`` threads a zero-valued scalar "token" through every message of a step, in program order. The token
is added to the rank's loss, so autograd runs the messages' backward in exactly the reverse of their forward
order: each rank receives the gradients for layer ``L-1`` first, then sends its own, and so on down to layer 0.
That makes the backward pass the reverse wavefront without relying on the order in which the autograd engine
happens to pick ready nodes. Only receives block; sends are asynchronous and are waited for in ``wait``. A rank
only ever waits on its predecessor in the forward pass and on its successor in the backward pass, so no cycle
of waits (deadlock) can form.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from ..state import LayerState

_FORWARD, _BACKWARD = 0, 1


def pack(layers: Sequence[LayerState], dtype: torch.dtype) -> torch.Tensor:
    """One flat buffer of ``layers``' memories in ``dtype`` (validity flags as 0/1); differentiable in G, S, T."""
    parts = []
    for layer in layers:
        parts += [
            layer.global_memory.flatten(),
            layer.global_state.flatten(),
            layer.has_global.flatten(),
            layer.temp.flatten(),
            layer.temp_valid.flatten(),
        ]
    return torch.cat([part.to(dtype) for part in parts])


def message_dtype(like: LayerState) -> torch.dtype:
    """The dtype a message of layers like ``like`` travels in: the widest of its memories' (S's float32 under a
    bfloat16 model, so S is never rounded; float64 for a float64 model)."""
    dtype = like.global_state.dtype
    for field in (like.global_memory, like.temp):
        dtype = torch.promote_types(dtype, field.dtype)
    return dtype


def packed_size(like: LayerState, count: int) -> int:
    """Elements of a buffer that holds ``count`` layers shaped like ``like``."""
    return count * sum(t.numel() for t in _fields(like))


def unpack(buffer: torch.Tensor, like: LayerState, count: int) -> list[LayerState]:
    """The inverse of ``pack``: ``count`` layers shaped like ``like`` (whose dtypes they take)."""
    sizes = [t.numel() for t in _fields(like)] * count
    if buffer.numel() != sum(sizes):
        raise ValueError(f"a memory message of {buffer.numel()} elements cannot hold {count} layers ({sum(sizes)})")
    pieces = iter(buffer.split(sizes))
    layers = []
    for _ in range(count):
        g, s, has_global, t, t_valid = (next(pieces).view(f.shape) for f in _fields(like))
        layers.append(LayerState(
            global_memory=g.to(like.global_memory.dtype),
            global_state=s.to(like.global_state.dtype),
            has_global=has_global > 0.5,
            temp=t.to(like.temp.dtype),
            temp_valid=t_valid > 0.5,
        ))
    return layers


def _fields(layer: LayerState) -> tuple[torch.Tensor, ...]:
    return layer.global_memory, layer.global_state, layer.has_global, layer.temp, layer.temp_valid


class Link:
    """This rank's two boundaries in one training step: ``prev`` and ``next`` are the global ranks of the
    neighbouring stages (None at either end of the active pipeline); ``per_layer`` says whether message ``i``
    holds layer ``i`` (the wavefront) or all layers (the naive hand-off), for error messages.

    ``receive`` and ``send`` are recorded in the autograd graph; ``token`` is the scalar to add to this rank's
    loss (see the module docstring). ``wait`` blocks until every asynchronous send has been delivered.
    """

    def __init__(self, prev: int | None, next: int | None, group=None, per_layer: bool = True, device=None):
        self.prev, self.next, self.group, self.per_layer = prev, next, group, per_layer
        # on the model's device: a rank that neither sends nor receives (a single chunk, data parallelism alone)
        # adds its chunk losses, which live there, to a zero made from the token
        self.token = torch.zeros((), requires_grad=True, device=device)
        self._sends: list[tuple] = []  # (work, tensor, dst, tag)

    def receive(self, tag: int, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
        """The buffer the previous stage sends with ``tag``; its gradient goes back to that stage."""
        buffer, self.token = _Receive.apply(self.token.to(device), self, tag, numel, dtype)
        return buffer

    def send(self, tag: int, buffer: torch.Tensor) -> None:
        """Sends ``buffer`` to the next stage; in the backward pass, receives its gradient from there."""
        self.token = _Send.apply(buffer, self.token.to(buffer.device), self, tag)

    def wait(self) -> None:
        for work, _, dst, tag in self._sends:
            try:
                work.wait()
            except RuntimeError as err:
                raise RuntimeError(f"sending {self._describe(tag)} to rank {dst} failed: {err}") from err
        self._sends.clear()

    def _isend(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        tensor = tensor.contiguous()  # kept alive in _sends until delivered
        self._sends.append((dist.isend(tensor, dst, group=self.group, tag=tag), tensor, dst, tag))

    def _describe(self, tag: int) -> str:
        what = f"layer {tag // 2}'s" if self.per_layer else "all layers'"
        return f"{what} memories" if tag % 2 == _FORWARD else f"the gradient of {what} memories"

    def _recv(self, tensor: torch.Tensor, src: int, tag: int) -> None:
        try:
            dist.recv(tensor, src, group=self.group, tag=tag)
        except RuntimeError as err:
            raise RuntimeError(f"waiting for {self._describe(tag)} from rank {src} failed: {err}") from err


def _tag(tag: int, direction: int) -> int:
    """Forward and backward messages get distinct tags (gloo matches on them; NCCL keeps per-pair order)."""
    return 2 * tag + direction


class _Receive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, link: Link, tag: int, numel: int, dtype):
        buffer = torch.empty(numel, dtype=dtype, device=token.device)
        link._recv(buffer, link.prev, _tag(tag, _FORWARD))
        ctx.link, ctx.tag = link, tag
        return buffer, torch.zeros_like(token)

    @staticmethod
    def backward(ctx, grad_buffer, grad_token):
        # Unused memories get a zero gradient (autograd materialises it), so the previous stage always hears back.
        ctx.link._isend(grad_buffer, ctx.link.prev, _tag(ctx.tag, _BACKWARD))
        return grad_token, None, None, None, None


class _Send(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buffer, token, link: Link, tag: int):
        link._isend(buffer.detach(), link.next, _tag(tag, _FORWARD))
        ctx.link, ctx.tag = link, tag
        ctx.shape, ctx.dtype = buffer.shape, buffer.dtype
        return torch.zeros_like(token)

    @staticmethod
    def backward(ctx, grad_token):
        grad = torch.empty(ctx.shape, dtype=ctx.dtype, device=grad_token.device)
        ctx.link._recv(grad, ctx.link.next, _tag(ctx.tag, _BACKWARD))
        return grad, grad_token, None, None

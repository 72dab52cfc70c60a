"""A cost model of one training step under the wavefront and naive schedules, and a per-rank memory estimate
(no torch: it runs anywhere, for any size).

Time: each (layer, chunk) step costs ``forward`` then ``backward`` seconds; a memory message costs ``latency``
plus ``transfer`` per layer it holds. The schedules are simulated event by event, with the blocks of
``chunk_blocks``:

- wavefront: rank ``p`` runs layer ``l`` of its ``n_p`` chunks once it has finished layer ``l-1`` and layer
  ``l``'s memories from rank ``p-1`` have arrived; the backward pass is the same in reverse. With free messages
  and equal blocks a step costs ``(L + P - 1) n (f + b)``, against ``P L n (f + b)`` for the naive hand-off: the
  ideal speed-up ``P L / (L + P - 1)`` of METHOD.md section 5.
- naive: rank ``p`` starts its forward pass when rank ``p-1`` has finished its whole block (one message of all
  ``L`` layers), and its backward pass when rank ``p+1`` has finished its own.

The loss head (final norm, LM head, cross entropy) costs ``head`` seconds per chunk, forward and backward
together, between a rank's forward and backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blocks import chunk_blocks

GIB = 2**30


@dataclass(frozen=True)
class Costs:
    """Seconds: one (layer, chunk) step forward and backward; a message's fixed cost and its cost per layer of
    memories it carries; the loss head of one chunk (forward and backward)."""

    forward: float = 1.0
    backward: float = 2.0
    latency: float = 0.0
    transfer: float = 0.0
    head: float = 0.0

    def message(self, layers: int) -> float:
        return self.latency + self.transfer * layers


def single_process_time(layers: int, chunks: int, costs: Costs) -> float:
    """One process reads every chunk through every layer (no messages)."""
    return chunks * (layers * (costs.forward + costs.backward) + costs.head)


def wavefront_time(layers: int, ranks: int, chunks: int, costs: Costs) -> float:
    """Seconds from the first forward step to the end of the last backward step, under the wavefront."""
    sizes = [len(block) for block in chunk_blocks(chunks, ranks) if len(block)]
    hop = costs.message(1)
    # Forward: done[p] is when rank p finished its current layer.
    done = [0.0] * len(sizes)
    for _ in range(layers):
        for p, n in enumerate(sizes):
            arrival = done[p - 1] + hop if p else 0.0  # done[p-1] already holds this layer
            done[p] = max(done[p], arrival) + n * costs.forward
    done = [t + n * costs.head for t, n in zip(done, sizes)]
    # Backward: layers from the last to the first, ranks from the last to the first.
    for _ in range(layers):
        for p in reversed(range(len(sizes))):
            arrival = done[p + 1] + hop if p + 1 < len(sizes) else 0.0
            done[p] = max(done[p], arrival) + sizes[p] * costs.backward
    return max(done)


def naive_time(layers: int, ranks: int, chunks: int, costs: Costs) -> float:
    """The same for the chunk-block hand-off: each rank waits for its neighbour's whole block."""
    sizes = [len(block) for block in chunk_blocks(chunks, ranks) if len(block)]
    hop = costs.message(layers)
    forward_done, ready = [], 0.0
    for n in sizes:
        ready += n * (layers * costs.forward + costs.head)
        forward_done.append(ready)
        ready += hop
    done = 0.0
    for p in reversed(range(len(sizes))):
        start = max(forward_done[p], done + hop if p + 1 < len(sizes) else 0.0)
        done = start + sizes[p] * layers * costs.backward
    return done


def ideal_speedup(layers: int, ranks: int) -> float:
    """Wavefront over naive with free messages, no head and equal blocks: ``P L / (L + P - 1)``."""
    return ranks * layers / (layers + ranks - 1)


def calibrate(layers: int, chunks: int, single: float, wavefront: float, backward_ratio: float = 2.0) -> Costs:
    """Costs that reproduce measured step times of one process and of a two-rank wavefront (same sample).

    The single-process time gives the cost of a (layer, chunk) step (split ``1 : backward_ratio`` between
    forward and backward; the head is folded into the steps); what the two-rank wavefront takes beyond the
    model's compute is charged to messages, as a per-message latency.
    """
    step = single / (layers * chunks)
    costs = Costs(forward=step / (1 + backward_ratio), backward=step * backward_ratio / (1 + backward_ratio))
    no_messages = wavefront_time(layers, 2, chunks, costs)
    hops = 2  # one boundary, crossed once forward and once backward on the critical path
    return Costs(costs.forward, costs.backward, latency=max(wavefront - no_messages, 0.0) / hops)


# ----------------------------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes (Llama/Qwen layout: GQA attention, gated MLP, RMSNorm)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool = True

    def parameters(self) -> int:
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * self.ffn + 2 * d + 2 * self.head_dim  # + q/k norms
        return self.layers * per_layer + self.vocab * d * (1 if self.tied else 2) + d

    def lora_parameters(self, rank: int) -> int:
        """LoRA of ``rank`` on q_proj and v_proj of every layer (the project's default targets)."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * rank * ((d + q) + (d + kv))


QWEN3_4B = ModelShape(layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, ffn=9728, vocab=151936, tied=True)


@dataclass(frozen=True)
class CometSizes:
    chunk: int = 2048  # C
    global_slots: int = 512  # M
    temp_capacity: int = 2048  # K
    stride: int = 8  # s
    adapter_rank: int = 8  # r

    def parameters(self, shape: ModelShape) -> int:
        d, r = shape.hidden, self.adapter_rank
        per_layer = (d + 2 * d + 1 + 2 * d * r) + (d + 2 * d * r)  # global: norm, gate, RLA; temporary: norm, RLA
        return shape.layers * per_layer + (self.global_slots + 1) * d

    @property
    def stream_rows(self) -> int:
        """Rows that carry hidden states from layer to layer: text, beacons, readouts."""
        return self.chunk + self.chunk // self.stride + self.global_slots

    @property
    def memory_rows(self) -> int:
        """Rows of one layer's memories: G and S (M each) and T (K)."""
        return 2 * self.global_slots + self.temp_capacity


def memory_per_rank(
    shape: ModelShape,
    sizes: CometSizes,
    tokens: int,
    ranks: int,
    weight_bytes: int = 2,
    activation_bytes: int = 2,
    lora_rank: int = 8,
) -> dict[str, float]:
    """Bytes one rank holds at its peak in a LoRA + memory training step with checkpointing per (layer, chunk).

    weights            the whole backbone in ``weight_bytes`` per parameter (every rank holds the model)
    trainable          LoRA and CoMeT parameters: fp32 master copy, gradient and two AdamW moments (16 bytes)
    checkpoints        what checkpointing keeps per own (layer, chunk): the stream rows' input and the memories
                       going in; plus per own chunk the final hidden states the loss head recomputes from
    recompute          the largest transient: one (layer, chunk) step recomputed with its gradients (about twice
                       its forward activations; sdpa/flash attention, so no rows x rows score matrix), or the
                       loss head of one chunk (logits in ``activation_bytes`` plus fp32 log-probabilities and
                       their gradient), whichever is larger
    messages           one layer's memories received and one sent, with their gradients
    """
    chunks = -(-tokens // sizes.chunk)
    own = -(-chunks // ranks)
    d, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    rows = sizes.memory_rows - sizes.global_slots + sizes.stream_rows  # G, T and the stream rows enter a layer
    per_step_checkpoint = (sizes.stream_rows + sizes.memory_rows) * d * activation_bytes
    layer_activations = rows * (5 * d + 2 * q + 2 * kv + 4 * shape.ffn) * activation_bytes
    head = sizes.chunk * shape.vocab * (activation_bytes + 4 + 4)
    trainable = shape.lora_parameters(lora_rank) + sizes.parameters(shape)
    return {
        "weights": shape.parameters() * weight_bytes,
        "trainable": trainable * 16,
        "checkpoints": own * shape.layers * per_step_checkpoint + own * sizes.chunk * d * activation_bytes,
        "recompute": max(2 * layer_activations, head),
        "messages": 4 * sizes.memory_rows * d * activation_bytes,
    }

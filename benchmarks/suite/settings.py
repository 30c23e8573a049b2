"""The suite's sizes and repetition counts: one :class:`Settings` for every row, with the
presets ``full()`` (the default), ``quick()`` (``--quick``), ``gpu()`` (``--device cuda``) and
``toy()`` (``--toy``, the smoke test). A row module that needs its own sizes adds fields here,
with a toy value in ``toy()`` so that ``tests/test_benchmarks.py`` runs it in seconds. The
fields go into the JSON as ``settings`` and to child processes as JSON (plain types only)."""

from __future__ import annotations

from dataclasses import dataclass, field

XLMR_VOCAB = 250_002


@dataclass
class Settings:
    """Sizes and repetition counts; ``quick()`` / ``full()`` / ``toy()`` (the smoke test)."""

    name: str = "full"
    # mlm_head_speedup
    head_layers: int = 12
    head_hidden: int = 768
    head_heads: int = 12
    head_ffn: int = 3072
    head_vocab: int = XLMR_VOCAB
    head_batch: int = 4
    head_length: int = 128
    head_reps: int = 7
    # framework_overhead and vs_hf_trainer (quickstart model)
    overhead_reps: int = 40
    hf_reps: int = 40
    # xlco_step_ratio
    xlco_layers: int = 12
    xlco_layer: int = 8
    xlco_hidden: int = 768
    xlco_heads: int = 12
    xlco_ffn: int = 3072
    xlco_vocab: int = XLMR_VOCAB  # 0: the quickstart tokenizer's vocabulary
    xlco_batch: int = 4
    xlco_length: int = 128
    xlco_queue: int = 131_072
    xlco_reps: int = 6
    # ema_foreach_speedup (a base-size body)
    ema_layers: int = 12
    ema_hidden: int = 768
    ema_heads: int = 12
    ema_ffn: int = 3072
    ema_vocab: int = XLMR_VOCAB
    ema_reps: int = 9
    # enqueue_ratio
    queue_sizes: tuple[int, int] = (131_072, 1_024)
    queue_dim: int = 768
    queue_keys: int = 128
    queue_sweep: tuple[int, ...] = (16, 1024)
    queue_calls: int = 50
    queue_reps: int = 15
    # data_pipeline_margin
    pipeline_steps: int = 300
    pipeline_trainer_steps: int = 5
    pipeline_reps: int = 5
    # peak RSS of infoxlm_large (subprocess); MFU
    memory_recipe: str = "infoxlm_large"
    memory_preset: str = "large"
    memory_vocab: int = XLMR_VOCAB
    memory_layers: int = 0  # 0: the preset's
    memory_xlco_layer: int = 0  # 0: the recipe's
    memory_length: int = 128
    run_memory: bool = True
    matmul_size: int = 2048
    # memory and speed rows (benchmarks/memory_speed.py); the base shape is head_*'s
    device: str = "cpu"  # --device cuda: the trainer-based rows on the GPU, and gpu_mfu
    chunk_rows: int = 256  # train.lm_head_chunk_rows of the chunked variants
    # chunked_head_time_ratio's chunk (0: chunk_rows), below the step's masked rows (4 × 128 tokens: 76, 3 chunks)
    head_chunk_rows: int = 32
    compile_layers: int = 0  # 0: head_layers
    compile_warmup: int = 2
    compile_reps: int = 5
    mfu_reps: int = 10
    mfu_param_dtype: str = "bf16"  # gpu_mfu's train.param_dtype: bf16 weights, fp32 masters (bf16_weights_step_speedup)
    lean_batch: int = 8  # large_peak_vs_analytic: micro-batch × length of the infoxlm_large step
    lean_length: int = 512
    lean_steps: int = 2  # the first allocates AdamW's moments; the peak is the steady state's
    # extra --set overrides for every quickstart-based trainer (the smoke test shrinks the data)
    quickstart_sets: list[str] = field(default_factory=list)
    corpus_lines: int = 256
    # data path (benchmarks/data_bench.py)
    tokenizer_lines: int = 200_000
    tokenizer_reps: int = 3
    cache_lines: int = 200_000
    cache_reps: int = 3
    sampler_rows: int = 10**8
    sampler_draws: int = 1_000_000
    # packed_tokens_per_s_ratio (benchmarks/packed_attention.py)
    packed_lines: int = 10_000
    packed_vocab: int = 8000
    packed_batch: int = 64
    packed_reps: int = 7

    @classmethod
    def full(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            name="quick", head_layers=4, head_reps=5, overhead_reps=30, hf_reps=30,
            xlco_hidden=256, xlco_heads=4, xlco_ffn=1024, xlco_vocab=0, xlco_batch=16, xlco_reps=8,
            ema_reps=5, queue_reps=11, pipeline_reps=3, pipeline_steps=300, compile_reps=3, packed_reps=5,
            tokenizer_lines=200_000, tokenizer_reps=3, cache_lines=50_000, cache_reps=2, sampler_draws=200_000,
        )

    @classmethod
    def gpu(cls) -> Settings:
        """``--device cuda``: the XLM-R-base shape at L = 512 (12 layers, hidden 768, vocab
        250,002, B = 8) for the GPU rows, few repetitions (benchmarks/gpu_check.sh's budget)."""
        return cls(name="gpu", device="cuda", head_batch=8, head_length=512, head_reps=5, compile_reps=5,
                   compile_warmup=3, mfu_reps=10, chunk_rows=256, head_chunk_rows=256, run_memory=False)

    @classmethod
    def toy(cls) -> Settings:
        """Every code path at toy sizes (seconds): for the smoke test, numbers mean nothing."""
        return cls(
            name="toy", head_layers=1, head_hidden=32, head_heads=2, head_ffn=64, head_vocab=6000,
            head_batch=2, head_length=16, head_reps=1, overhead_reps=2, hf_reps=2,
            xlco_layers=3, xlco_layer=2, xlco_hidden=32, xlco_heads=2, xlco_ffn=64, xlco_vocab=0,
            xlco_batch=2, xlco_length=16, xlco_queue=64, xlco_reps=1,
            ema_layers=1, ema_hidden=32, ema_heads=2, ema_ffn=64, ema_vocab=6000, ema_reps=1,
            queue_sizes=(4096, 64), queue_dim=16, queue_keys=8, queue_sweep=(4,), queue_calls=5, queue_reps=1,
            pipeline_steps=3, pipeline_trainer_steps=1, pipeline_reps=1,
            memory_preset="tiny", memory_vocab=6000, memory_layers=2, memory_xlco_layer=1, memory_length=16,
            chunk_rows=4, head_chunk_rows=0, compile_warmup=2, compile_reps=1, mfu_reps=2, lean_batch=2, lean_length=16,
            matmul_size=128, corpus_lines=24,
            tokenizer_lines=200, tokenizer_reps=1, cache_lines=100, cache_reps=1, sampler_rows=10**6,
            sampler_draws=8192, packed_lines=200, packed_vocab=300, packed_batch=8, packed_reps=1,
            quickstart_sets=["data.mono.max_lines=40", "data.parallel.max_lines=20",
                             "model.tokenizer.vocab_size=400", "train.batch_size=4"],
        )


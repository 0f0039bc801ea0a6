#!/usr/bin/env bash
# The GPU checks, as one short script for a session lent a CUDA device (see README, Benchmarks):
# the CUDA path end to end (pinned prefetch, bf16 autocast, torch.compile), then the pretraining
# benchmark of the paper's impala_x8 torso at batch 256 in bf16, local learning's memory on CUDA
# (max_memory_allocated), Adan vs AdamW on CUDA, the MoE and local options on CUDA and the GPU
# tests (Adan's no-host-sync clipping); then a few minutes of each stage of the paper-scale
# experiment on CUDA: Dopamine's DQN logging its run (bench_dqn and a short replay_log run),
# preset=paper pretraining, eval_preset=paper linear control. Writes JSON under ${OUT:-gpu_out}.
set -euo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
py=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
$py -m pvn collect game=Pong steps=20000 out="$out/data" num_envs=8 progress=false > "$out/collect.json"
$py -m pvn pretrain data.path="$out/data" run_dir="$out/run" device=cuda bf16=true compile=true \
  torso=impala_x8 tasks.num_tasks=100 tasks.target_proportion=0.01 batch_size=256 steps=300 \
  td.warmup_steps=50 log_every=50 checkpoint_every=300 progress=false > "$out/pretrain.json"
$py scripts/bench_pretrain.py --device cuda --torsos impala_x8 nature --batches 256 --bf16 \
  --seconds 5 > "$out/bench_pretrain_cuda.json"
$py scripts/bench_memory.py --device cuda --torso impala --batch 256 > "$out/bench_memory_cuda.json"
$py scripts/bench_adan.py --device cuda > "$out/bench_adan_cuda.json"
$py -m pvn pretrain data.path="$out/data" run_dir="$out/run_moe_man" device=cuda bf16=true \
  torso=impala moe=momentum_smoe local=man optimizer=adan steps=100 progress=false > "$out/moe_man.json"
$py -m pytest -q tests/test_adan.py > "$out/test_adan_cuda.txt"
$py scripts/bench_replay.py > "$out/bench_replay.json"
# the paper-scale experiment's stages, a few minutes each (docs/experiments.md)
$py scripts/bench_dqn.py --device cuda --steps 4000 --rounds 2 --log > "$out/bench_dqn_cuda.json"
$py -m pvn evaluate eval_preset=dopamine_dqn game=Breakout device=cuda steps=30000 num_envs=8 \
  agent.min_replay=2000 replay_log="$out/dqn_log" replay_log_capacity=10000 \
  run_dir="$out/dqn_run" progress=false > "$out/dqn_log.json"
$py -m pvn pretrain preset=paper data.path="$out/dqn_log" run_dir="$out/paper_pretrain" \
  device=cuda bf16=true steps=600 td.warmup_steps=100 log_every=100 checkpoint_every=600 \
  progress=false > "$out/paper_pretrain.json"
$py -m pvn evaluate eval_preset=paper encoder="$out/paper_pretrain" game=Breakout device=cuda \
  steps=20000 eval_episodes=10 eval_max_steps=2000 run_dir="$out/paper_eval" progress=false \
  > "$out/paper_eval.json"
echo "done: $out"

"""Which loads of the portable kernel Triton pipelines on sm_90, and the registers and shared memory a program
takes (what decides how many programs share an SM), without a mask and in the two passes of a masked call (the
dense pass: sequences whose mask is dense in its range, not read; the sparse pass: the others): the kernel is
compiled for an H100/H200 target on any machine (triton.compile with a GPUTarget; no GPU needed), its Triton
GPU IR is searched for asynchronous copies (a pipelined load: global -> shared memory, stages ahead) and plain
loads, and Triton's ptxas reports the registers.

    python benchmarks/pipelined_loads.py                       # GTA 16/4, 128 + 64 and GQA 32/8/64, 2 stages
    python benchmarks/pipelined_loads.py --spec gta --stages 3 --dump /tmp/ir   # also write the IR and PTX
    python benchmarks/pipelined_loads.py --spec gqa128 gta --page-size 64 --stages 2 5 7   # paged caches
    python benchmarks/pipelined_loads.py --table tuned_configs/NVIDIA_H200.json   # every tuned GQA/GTA/MHA config

The launch arguments are specialised as a contiguous bf16 call is (16-byte aligned pointers, strides divisible
by 16, the mask's key stride 1): without that the loads would not vectorise and nothing would be pipelined.
Beside Triton's shared bytes it prints the resource model's (kernels/portable/resource_model.py). With --table it
compiles each distinct config of a tuned table's GQA, GTA and MHA entries without a mask and in the two passes of a
call with a bool key-vector mask, and prints the programs an SM holds in each (registers, shared memory and warps
against sm_90's limits): where a change to the kernel costs a tuned config a resident program."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import tempfile

from glacompiler.kernels.latent_hopper.config import SM90_CTA_RESERVE, SM90_SHARED_MEMORY_PER_SM
from glacompiler.kernels.portable.config import PortableConfig
from glacompiler.kernels.common.tiles import next_power_of_two
from glacompiler.kernels.portable.render import decode_kernel_module
from glacompiler.kernels.portable.resource_model import estimate_resources
from glacompiler.spec import AttentionSpec

SPECS = {
    "gta": AttentionSpec.grouped_tied(16, 4, 128, 64),
    "gqa64": AttentionSpec.grouped(32, 8, 64),
    "gqa128": AttentionSpec.grouped(32, 8, 128),
    "mha64": AttentionSpec.grouped(16, 16, 64),
    "mla16": AttentionSpec.latent(16, 1, 512, 64),  # the latent sites a compiled graph runs on these kernels
    "gla2x16": AttentionSpec.latent(16, 2, 256, 64),
}
POINTERS = {"SEQLENS": "*i32", "KV_BEGIN": "*i32", "KV_END": "*i32", "MASK_DENSE": "*i32", "PAGE_TABLE": "*i32",
            "MASK": "*u8", "LSE": "*fp32", "ALIBI": "*fp32", "SINKS": "*fp32", "MERGED_LSE": "*fp32",
            "SPLIT_COUNTS": "*i32"}
FLOATS = ("qk_scale_log2", "softcap_scale")
ELEMENT_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
NOT_DIVISIBLE = {"num_splits", "num_pages", "window_left", "window_right", "stride_lh", "stride_lsplit",
                 "stride_osplit"}


MASK_PASSES = {"no": (False, False), "dense": (True, True), "sparse": (True, False)}  # -> HAS_MASK, DENSE_PASS


SM90_REGISTERS_PER_SM, SM90_THREADS_PER_SM, SM90_PROGRAMS_PER_SM = 65536, 2048, 32
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated to a warp in units of 256


def compile_for_sm90(spec: AttentionSpec, config: PortableConfig, has_mask: bool, dense_pass: bool = False,
                     page_size: int = 0, query_len: int = 1):
    """The kernel of a config (its fused-combine variant where config.fused_combine) compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fused = bool(config.fused_combine)  # (False with one split)
    kernel = decode_kernel_module(spec, config.block_d, config.preload_q, config.dv_split,
                                  fused).decode_attention_split_kernel
    constants = dict(G=spec.group_size, LQ=query_len, PAGE_SIZE=page_size or 1, BLOCK_M=config.block_m,
                     BLOCK_N=config.block_n, HAS_MASK=has_mask, MASK_IS_BOOL=True, MASK_PER_ROW=False, CAUSAL=False,
                     HAS_SOFTCAP=False, HAS_ALIBI=False, HAS_SINKS=False, HAS_WINDOW=False, DENSE_PASS=dense_pass,
                     stride_mn=1)
    if fused:
        constants["SPLITS_POW2"] = next_power_of_two(config.num_splits)
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name] = POINTERS[name]
        elif name.isupper():
            signature[name] = "*" + ELEMENT_TYPES[spec.dtype]  # Q, K, V, QR, KR, OUT
        else:
            signature[name] = "fp32" if name in FLOATS else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if signature[name] != "constexpr" and name not in FLOATS and name not in NOT_DIVISIBLE}
    source = ASTSource(fn=kernel, signature=signature, attrs=attrs,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages))


def loop_loads(ttgir: str) -> list:
    """Per key loop of the IR, in order: (asynchronous copies, plain 2-D tile loads) in its body."""
    loops, indent, current = [], None, None
    for line in ttgir.splitlines():
        depth = len(line) - len(line.lstrip())
        if current is not None and line.strip() and depth <= indent:
            current = None  # the loop's closing brace
        if "scf.for" in line:
            indent, current = depth, [0, 0]
            loops.append(current)
        elif current is not None and "async_copy_global_to_local" in line:
            current[0] += 1
        elif current is not None and re.search(r"= tt\.load .*tensor<\d+x\d+x", line):
            current[1] += 1
    return [tuple(loop) for loop in loops]


def registers(ptx: str) -> int:
    """Registers a thread of the compiled kernel takes, from Triton's own ptxas (-v) for sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as folder:
        source = pathlib.Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        report = subprocess.run([get_ptxas(90).path, "-v", "-arch=sm_90a", str(source), "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Used (\d+) registers", report).group(1))


def programs_per_sm(registers_per_thread: int, shared_bytes: int, num_warps: int) -> int:
    """Programs of a kernel one sm_90 multiprocessor holds at once, by registers, shared memory and threads."""
    warp_registers = -(-registers_per_thread * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    return min(SM90_PROGRAMS_PER_SM, SM90_THREADS_PER_SM // (32 * num_warps),
               SM90_REGISTERS_PER_SM // (warp_registers * num_warps),
               SM90_SHARED_MEMORY_PER_SM // (shared_bytes + SM90_CTA_RESERVE))


def table_configs(path: str) -> list:
    """(spec, page size, query length, config) of every distinct portable GQA/GTA/MHA entry of a tuned table."""
    data = json.loads(pathlib.Path(path).read_text())
    found = {}
    for entry in data["entries"]:
        if entry["family"] != "portable" or entry["spec"]["kind"] not in ("gqa", "gta", "mha"):
            continue
        key = json.dumps([entry["spec"], entry["page_size"], entry["bucket"]["query_len"], entry["config"]],
                         sort_keys=True)
        found.setdefault(key, (AttentionSpec(**entry["spec"]), entry["page_size"], entry["bucket"]["query_len"],
                               PortableConfig.from_dict(entry["config"])))
    return list(found.values())


def table_report(path: str) -> None:
    print("kind  dims  page  Lq  config | registers, shared bytes, programs an SM: no mask | " +
          " | ".join(f"{mask} pass" for mask in MASK_PASSES if mask != "no"))
    fewer = dict.fromkeys(MASK_PASSES, 0)
    rows = table_configs(path)
    for spec, page_size, query_len, config in rows:
        cells = {}
        for mask, (has_mask, dense_pass) in MASK_PASSES.items():
            compiled = compile_for_sm90(spec, config, has_mask, dense_pass, page_size, query_len)
            regs, shared = registers(compiled.asm["ptx"]), compiled.metadata.shared
            cells[mask] = (regs, shared, programs_per_sm(regs, shared, config.num_warps))
            fewer[mask] += cells[mask][2] < cells["no"][2]
        print(f"{spec.kind:<5} {spec.head_dim_k:>4} {page_size:>5} {query_len:>3}  {config} | " +
              " | ".join(" ".join(map(str, cell)) for cell in cells.values()), flush=True)
    print(f"{len(rows)} configs; a masked pass holds fewer programs an SM than the maskless kernel in: " +
          ", ".join(f"{mask} {count}" for mask, count in fewer.items() if mask != "no"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", nargs="+", default=["gta", "gqa64"], choices=sorted(SPECS))
    parser.add_argument("--stages", type=int, nargs="+", default=[2])
    parser.add_argument("--page-size", type=int, default=0, help="keys a page (0: a contiguous cache)")
    parser.add_argument("--block-m", type=int, default=16)
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--dump", help="a folder to write each variant's Triton GPU IR and PTX to")
    parser.add_argument("--table", help="a tuned table (JSON): compile each of its GQA/GTA/MHA configs instead")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: unset it, the kernel is compiled here, not interpreted")
    if args.table:
        table_report(args.table)
        return
    print("spec      stages mask    key loops: (async copies, plain tile loads) in each body   shared bytes  model  "
          "registers")
    for name in args.spec:
        spec = SPECS[name].with_storage(paged=args.page_size > 0)
        for stages in args.stages:
            config = PortableConfig(block_m=args.block_m, block_n=args.block_n, num_stages=stages)
            for mask, (has_mask, dense_pass) in MASK_PASSES.items():
                compiled = compile_for_sm90(spec, config, has_mask, dense_pass, args.page_size)
                ttgir = compiled.asm["ttgir"]
                if args.dump:
                    folder = pathlib.Path(args.dump)
                    folder.mkdir(parents=True, exist_ok=True)
                    stem = f"{name}_m{args.block_m}_n{args.block_n}_st{stages}_p{args.page_size}_mask-{mask}"
                    (folder / f"{stem}.ttgir").write_text(ttgir)
                    (folder / f"{stem}.ptx").write_text(compiled.asm["ptx"])
                print(f"{name:<9} {stages:>6} {mask:<7} {str(loop_loads(ttgir)):<57} {compiled.metadata.shared:>12} "
                      f"{estimate_resources(spec, config).shared_bytes:>6} {registers(compiled.asm['ptx']):>10}")


if __name__ == "__main__":
    main()

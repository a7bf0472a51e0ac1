"""`vidpipe bench` (placeholder, replaced below)."""
import argparse
def add_bench_arguments(parser: argparse.ArgumentParser) -> None: pass
def cmd_bench(args: argparse.Namespace) -> int: return 0

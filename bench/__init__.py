"""The benchmark harness: `python -m bench` (see bench/README.md). The older standalone scripts in this
directory (hostile.py, hit_micro.py, vcl_bench.py) still run as `python bench/NAME.py`."""

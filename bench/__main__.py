"""`python -m bench NAME [options]`: the project's benchmarks."""

import sys


def main() -> int:
    names = ("rd",)
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        print(f"usage: python -m bench {{{','.join(names)}}} [options]", file=sys.stderr)
        return 2
    if sys.argv[1] == "rd":
        from .rd import main as rd

        return rd(sys.argv[2:])
    return 2


if __name__ == "__main__":
    sys.exit(main())

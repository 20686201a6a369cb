"""`reasoner info CONFIG_OR_CHECKPOINT`: parameter counts, total and activated per token."""
from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "info", help="parameter counts of a model config or checkpoint (no weights allocated)",
        description="Print total and activated-per-token parameters with a per-part breakdown. "
        "Weights are never allocated (meta device), so the 671B DeepSeek-V3 shape works on a laptop.",
    )
    parser.add_argument("model", help="model YAML, packaged name (tiny, small, deepseek-v3, ...) or checkpoint dir")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from reasoner.model import model_config
    from reasoner.params import PARTS, count_parameters, human

    config = model_config(args.model)
    counts = count_parameters(config)
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    console = Console()
    console.print(f"[bold]{args.model}[/]: {human(counts['all']['total'])} total, "
                  f"{human(counts['all']['active'])} activated per token")
    table = Table()
    for column in ("part", "total", "activated / token"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in PARTS:
        if counts[part]["total"]:
            table.add_row(part.replace("_", " "), human(counts[part]["total"]), human(counts[part]["active"]))
    table.add_row("all", human(counts["all"]["total"]), human(counts["all"]["active"]), style="bold")
    console.print(table)
    print(f"total={counts['all']['total']} activated={counts['all']['active']}")
    return 0

"""Print the widths our solver picks for the Table 3 rows whose C / C' the paper does not give.

Run once to fill ``reaf_lightning/models/paper_tables.json``; ``tests/test_zoo.py``
re-solves every such row and checks the stored widths, so they cannot drift.
Rule: C = C' when that matches the baseline's MACs within 2 %, else C' free
(the C' closest to C within 2 %).
"""

from reaf_lightning.models.width_solver import solve_width

UNKNOWN = (
    "8-7-8 5-4-5 3-2-3 8-6-28 7-5-21 6-4-15 5-3-10 4-2-6 3-1-3 8-5-56 7-4-35 6-3-20 "
    "5-2-10 4-1-4 7-3-35 6-2-15 5-1-5 8-3-56 7-2-21 9-3-84 8-2-28 7-1-7 9-2-36"
).split()

for reaf in UNKNOWN:
    solution = solve_width("reaf_resnet50", reaf, "resnet50")
    free = abs(solution.relative_difference) > 0.02
    if free:
        solution = solve_width(
            "reaf_resnet50", reaf, "resnet50", free_out_width=True, tolerance=0.02
        )
    print(reaf, solution.width, solution.out_width, free, f"{solution.relative_difference:+.3%}")

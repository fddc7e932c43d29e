"""Regions in a plan: prices and quotas per region, an allow-list, spare replicas for a
lost region; placements worked out by hand, then two small searches on the twin."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from inferplane.config import ConfigError
from inferplane.plan import PlanSpec, load_plan, render_html, render_markdown, search
from inferplane.plan._placement import place, replicas_per_region, unplaceable

from .test_search import plan as flat_plan

ROOT = Path(__file__).resolve().parents[2]

# Three regions: us-east the cheapest with a quota of 2, eu-west on the offer's terms,
# eu-north dearer and with no reserved price.
A100 = {
    "on_demand": 2.0,
    "reserved": 1.4,
    "regions": {
        "us-east": {"on_demand": 1.5, "max_gpus": 2},
        "eu-west": {},
        "eu-north": {"on_demand": 2.5, "reserved": None},
    },
}


def plan(**changes: Any) -> PlanSpec:
    """The small plan of ``test_search``, its A100 offered in three regions."""
    return flat_plan(**{"gpus": {"A100": A100}, **changes})


@pytest.mark.parametrize(
    ("at_peak", "num_regions", "each"),
    [
        (4, 1, 4),  # one region carries the peak alone
        (1, 2, 1),  # the other region must hold the 1: 2 in all, the fleet doubled
        (4, 2, 4),  # 8 in all
        (4, 3, 2),  # two regions left hold 2 + 2 = 4: 6 in all, not 8
        (5, 3, 3),  # ceil(5 / 2): 9 in all
    ],
)
def test_each_region_holds_enough_for_the_others_to_carry_the_peak(
    at_peak: int, num_regions: int, each: int
) -> None:
    assert replicas_per_region(at_peak, num_regions) == each
    if num_regions > 1:  # any one lost, the rest still carry the peak
        assert (num_regions - 1) * each >= at_peak


def test_one_region_the_cheapest_with_room() -> None:
    # 2 replicas: us-east has room for 2 at 1.5 $/h: 3.0 $/h.
    two = place(plan(), "A100", 1, 2)
    assert two.key == "A100 x TP1 x 2 in us-east" and two.shortfall is None
    assert two.usd_per_hour == pytest.approx({"on_demand": 3.0, "reserved": 2.8, "spot": None})
    # 3 replicas: us-east's quota of 2 is too small, eu-west is next at 2.0 $/h: 6.0 $/h.
    three = place(plan(), "A100", 1, 3)
    assert three.key == "A100 x TP1 x 3 in eu-west" and three.shortfall is None
    assert three.usd_per_hour["on_demand"] == pytest.approx(6.0)


def test_two_regions_double_a_fleet_of_one_and_sum_their_prices() -> None:
    # R = 1 over 2 regions: ceil(1 / 1) = 1 in each, 2 in all, in the two cheapest:
    # us-east 1.5 + eu-west 2.0 = 3.5 $/h; reserved 1.4 + 1.4 (us-east keeps the offer's).
    placed = place(plan(min_regions=2), "A100", 1, 1)
    assert placed.key == "A100 x TP1 x 2 in us-east, eu-west"
    assert (placed.replicas, placed.gpus) == (2, 2)
    assert placed.usd_per_hour == pytest.approx({"on_demand": 3.5, "reserved": 2.8, "spot": None})
    assert [r["region"] for r in placed.regions()] == ["us-east", "eu-west"]
    assert [r["replicas"] for r in placed.regions()] == [1, 1]
    # R = 3 at TP2 over 3 regions: ceil(3 / 2) = 2 replicas, 4 GPUs in each; us-east's
    # quota of 2 is short and no other region is left.
    short = place(plan(min_regions=3), "A100", 2, 3)
    assert short.key == "A100 x TP2 x 6 in us-east, eu-west, eu-north"
    assert short.shortfall == "needs 4 A100 in us-east, quota 2"
    # 4 x (2.0 + 1.5 + 2.5) = 24 $/h on demand; eu-north has no reserved price.
    assert short.usd_per_hour == pytest.approx({"on_demand": 24.0, "reserved": None, "spot": None})


def test_quotas_and_max_gpus_say_why_a_fleet_cannot_be_had() -> None:
    one = plan(gpus={"H100": {"on_demand": 3.0, "regions": {"eu-west": {"max_gpus": 8}}}})
    assert place(one, "H100", 2, 6).shortfall == "needs 12 H100 in eu-west, quota 8"
    # The offer's max_gpus is the quota of every region that sets none, of an offer
    # without regions too (its one unnamed region).
    unnamed = plan(gpus={"H100": {"on_demand": 3.0, "max_gpus": 8}})
    assert place(unnamed, "H100", 1, 12).shortfall == "needs 12 H100, quota 8"
    assert place(unnamed, "H100", 1, 8).key == "H100 x TP1 x 8"
    # Both regions short of 3: the reason names the cheaper and says the other is too.
    small = plan(gpus={"A100": {"on_demand": 2.0, "max_gpus": 2, "regions": {"a": {}, "b": {}}}})
    assert place(small, "A100", 1, 3).shortfall == (
        "needs 3 A100 in a, quota 2; no other region has room for 3"
    )
    # 4 at the peak over 2 regions: 4 in each (eu-west and eu-north have room), 8 in
    # all, above max_gpus 6.
    capped = plan(min_regions=2, max_gpus=6)
    assert place(capped, "A100", 1, 2).shortfall is None  # 2 + 2
    assert place(capped, "A100", 1, 4).shortfall == "needs 8 GPUs in all, max_gpus 6"


def test_the_allow_list_keeps_the_fleet_in_its_regions() -> None:
    eu = plan(
        regions=["eu-*"],
        gpus={"A100": A100, "H100": {"on_demand": 3.0}},  # H100: where is not known
    )
    assert set(eu.allowed_terms("A100")) == {"eu-west", "eu-north"}
    assert place(eu, "A100", 1, 2).key == "A100 x TP1 x 2 in eu-west"  # not us-east
    assert unplaceable(eu, "H100") == "not offered in an allowed region"
    both = plan(regions=["eu-west", "us-east"], min_regions=2)
    assert unplaceable(both, "A100") is None
    assert unplaceable(plan(regions=["eu-west"]), "A100") is None
    lone = plan(min_regions=2, gpus={"A100": A100, "L40S": {"regions": {"eu-west": {}}}})
    assert unplaceable(lone, "L40S") == (
        "offered in eu-west only, fewer regions than min_regions 2"
    )


REGIONS_EXAMPLE = (ROOT / "examples" / "plan-regions.yaml").read_text()


def line_of(start: str) -> int:
    """The line of the example that starts with ``start``: where its error must point."""
    return REGIONS_EXAMPLE[: REGIONS_EXAMPLE.index(f"\n{start}")].count("\n") + 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("us-east: {on_demand: 2.70}", "us-east: {on_demand: -2.70}"), r"greater than or equal"),
        (("eu-west: {max_gpus: 4}", "eu-west: {max_gpus: 0}"), r"eu-west.max_gpus.*greater"),
        (("max_gpus: 12\n", "max_gpus: 0\n"), r"A100.max_gpus.*greater than or equal to 1"),
        (
            ("regions: [eu-*]", "regions: [eu-*, ap-*, mars]"),
            rf"{line_of('regions:')}: regions: ap-\*, mars match no",
        ),
        (
            ("min_regions: 2", "min_regions: 4"),
            rf"{line_of('min_regions:')}: min_regions: 4 is more than the regions",
        ),
        (("regions: [eu-*]", "regions: []"), r"regions.*at least 1"),
        (
            (
                "    regions:\n      eu-west: {max_gpus: 8}\n      eu-central: {on_demand: 1.20}",
                "    regions: {}",
            ),
            r"L40S.regions: .*at least 1",
        ),
    ],
)
def test_bad_regions_say_which_line_and_why(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    assert edit[0] in REGIONS_EXAMPLE
    path = tmp_path / "bad.yaml"
    path.write_text(REGIONS_EXAMPLE.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_plan(path)


def test_the_regions_example_loads() -> None:
    spec = load_plan(ROOT / "examples" / "plan-regions.yaml")
    # eu-* allows three of H100's four regions; A100's eu-west falls back to the offer.
    assert set(spec.allowed_terms("H100")) == {"eu-west", "eu-central", "eu-north"}
    assert spec.allowed_terms("A100")["eu-west"].max_gpus == 12
    assert spec.allowed_terms("A100")["eu-north"].max_gpus == 4


# On the twin: the same small plan that test_search plans without regions.


@pytest.fixture(scope="module")
def unnamed() -> dict[str, Any]:
    """The plan with its A100 at 2.0 $/h in one unnamed region: as before regions."""
    return search(flat_plan(gpus={"A100": {"on_demand": 2.0, "reserved": 1.4}}), workers=1)


def test_regions_change_where_and_what_it_costs_never_the_twin(unnamed: dict[str, Any]) -> None:
    before = unnamed["best"]
    assert before["key"] == f"A100 x TP1 x {before['replicas']}"  # the key of old
    assert before["regions"] == [
        {
            "region": None,
            "replicas": before["replicas"],
            "gpus": before["gpus"],
            "usd_per_hour": before["usd_per_hour"],
        }
    ]
    at_peak = before["replicas_at_peak"]
    assert before["replicas"] == at_peak and before["infeasible_reason"] is None
    result = search(plan(min_regions=2), workers=1)
    best = result["best"]
    # The twin finds the same R; over 2 regions each holds R, in the two cheapest with
    # room for it (us-east only while R <= 2, its quota).
    assert best["replicas_at_peak"] == at_peak and best["replicas"] == 2 * at_peak
    cheapest = ["us-east", "eu-west"] if at_peak <= 2 else ["eu-west", "eu-north"]
    assert [r["region"] for r in best["regions"]] == cheapest
    per_gpu = {"us-east": 1.5, "eu-west": 2.0, "eu-north": 2.5}
    assert best["usd_per_hour"]["on_demand"] == pytest.approx(
        at_peak * sum(per_gpu[name] for name in cheapest)
    )
    assert best["utilisation"] == pytest.approx(before["utilisation"] / 2)
    assert result["twin_runs"] == unnamed["twin_runs"]
    assert result["spike_test"] == unnamed["spike_test"]  # the twin ran the same fleet
    assert list(result["curves"]) == [best["key"]]
    markdown = render_markdown(result)
    assert "spread over 2 regions, any one may be lost" in markdown
    names = " · ".join(f"{name} {at_peak}" for name in cheapest)
    assert f"Replicas by region: {names}." in markdown


def test_a_plan_beyond_its_quotas_answers_with_the_closest(unnamed: dict[str, Any]) -> None:
    # One region with room for a single A100: the fleet that meets the SLOs needs R.
    at_peak = unnamed["best"]["replicas_at_peak"]
    assert at_peak >= 2
    tight = plan(gpus={"A100": {"on_demand": 2.0, "regions": {"eu-west": {"max_gpus": 1}}}})
    result = search(tight, workers=1)
    assert result["best"] is None and result["spike_test"] is None
    closest = result["closest"][0]
    assert closest["meets_slo"] and closest["key"] == f"A100 x TP1 x {at_peak} in eu-west"
    reason = f"needs {at_peak} A100 in eu-west, quota 1"
    assert closest["infeasible_reason"] == reason
    markdown = render_markdown(result)
    assert "**No configuration that meets the SLOs fits the quotas.**" in markdown
    assert f"{reason}" in markdown.split("## Decision", 1)[1]
    page = render_html(result)
    assert "No configuration that meets the SLOs fits the quotas" in page
    assert f'<small class="miss">{reason}</small>' in page


def test_reports_of_a_plan_without_regions_have_no_regions_column(
    unnamed: dict[str, Any],
) -> None:
    markdown = render_markdown(unnamed)
    assert "regions" not in markdown and "spread over" not in markdown
    assert "Regions" not in render_html(unnamed).split('id="decision"', 1)[1]


def test_the_decision_table_names_a_gpu_type_a_quota_stops(unnamed: dict[str, Any]) -> None:
    result = copy.deepcopy(unnamed)
    blocked = copy.deepcopy(result["best"])
    blocked |= {"key": "L40S x TP1 x 9 in eu-west", "gpu": "L40S"}
    blocked |= {"regions": [{"region": "eu-west", "replicas": 9}]}
    blocked |= {"infeasible_reason": "needs 9 L40S in eu-west, quota 4"}
    result["candidates"].append(blocked)
    meeting = sum(c["meets_slo"] for c in result["candidates"])
    markdown = render_markdown(result)
    rows = [
        line.split(" | ")[:3]
        for line in markdown.split("## Decision", 1)[1].splitlines()
        if line.startswith("| ") and "Beyond quota" in line
    ]
    assert rows == [
        [
            "| Beyond quota on L40S",
            "**L40S x TP1 x 9 in eu-west**",
            "eu-west 9 (**needs 9 L40S in eu-west, quota 4**)",
        ]
    ]
    assert f"{meeting} meet the SLOs, 1 of them beyond a quota" in markdown


def test_region_constraints_no_offer_can_meet_are_refused() -> None:
    flat = {"A100": {"on_demand": 2.0}}  # one unnamed region
    with pytest.raises(
        ValidationError, match=r"eu-west matches no GPU offer's region \(none, no offer names"
    ):
        plan(gpus=flat, regions=["eu-west"])
    with pytest.raises(ValidationError, match=r"2 is more than the regions any GPU offer has \(at"):
        plan(gpus=flat, min_regions=2)
    with pytest.raises(
        ValidationError, match=r"4 is more than the regions any GPU offer has allowed"
    ):
        plan(regions=["eu-*", "us-east"], min_regions=4)

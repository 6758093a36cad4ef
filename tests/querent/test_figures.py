import pandas as pd

from querent.figures import PlotSettings, heatmap_slides


def test_heatmap_slides_are_the_ends_of_each_class():
    predictions = pd.DataFrame(
        {
            "slide_id": ["a", "b", "c", "d", "e", "f"],
            "case_id": ["a", "b", "c", "d", "e", "f"],
            "truth": ["x", "x", "x", "y", "y", "y"],
            "prob_x": [0.9, 0.5, 0.2, 0.4, 0.3, 0.1],
            "prob_y": [0.1, 0.5, 0.8, 0.6, 0.7, 0.9],
        }
    )
    chosen = heatmap_slides(predictions, 1, ["b", "zz"])
    assert chosen[["slide_id", "group", "why"]].values.tolist() == [
        ["a", "x", "highest"], ["c", "x", "lowest"], ["f", "y", "highest"],
        ["d", "y", "lowest"], ["b", "", "listed"],
    ]  # fmt: skip


def test_heatmap_slides_of_survival_come_from_each_risk_group():
    predictions = pd.DataFrame(
        {
            "slide_id": list("abcdef"),
            "case_id": list("abcdef"),
            "time": [1.0, 2, 3, 4, 5, 6],
            "event": [1, 1, 0, 1, 0, 1],
            "risk": [6.0, 5, 4, 3, 2, 1],
        }
    )
    chosen = heatmap_slides(predictions, 1, [])
    assert set(chosen["group"]) == {"high risk", "low risk"}
    assert chosen.set_index("slide_id").loc["a", "why"] == "highest"
    assert chosen.set_index("slide_id").loc["f", "why"] == "lowest"
    assert len(chosen) == 4


def test_heatmap_slides_of_a_regression_are_the_highest_and_lowest_predicted():
    predictions = pd.DataFrame(
        {
            "slide_id": list("abcde"),
            "case_id": list("abcde"),
            "target": [1.0, 2, 3, 4, 5],
            "prediction": [2.0, 9, 1, 4, 5],
        }
    )
    chosen = heatmap_slides(predictions, 2, ["d"])
    assert chosen[["slide_id", "group", "why"]].values.tolist() == [
        ["b", "predicted", "highest"], ["e", "predicted", "highest"],
        ["c", "predicted", "lowest"], ["a", "predicted", "lowest"], ["d", "", "listed"],
    ]  # fmt: skip


def test_plot_settings_take_config_lists():
    settings = PlotSettings(formats=["png"], heatmap_slides=["s1"])
    assert settings.formats == ("png",) and settings.heatmap_slides == ("s1",)

import pytest

from tiger.metrics import format_table, main_values, multi_task_delta


def test_delta_m_by_hand():
    results = {"semseg": 55.0, "depth": 0.45}
    baselines = {"semseg": 50.0, "depth": 0.50}
    # semseg +10 %, depth (lower is better) +10 % -> mean +10 %
    assert multi_task_delta(results, baselines) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="no single-task baseline"):
        multi_task_delta({"edge": 70.0}, baselines)


def test_table_is_laid_out_like_the_papers():
    results = {"depth": {"rmse": 0.41151}, "semseg": {"mIoU": 63.551}, "edge": {"odsF": 80.31}}
    assert main_values(results) == {"semseg": 63.551, "edge": 80.31, "depth": 0.41151}
    table = format_table(results).splitlines()
    assert table[0].split("  ")[0].strip().startswith("Semseg mIoU")
    assert table[0].index("Boundary") < table[0].index("Depth")
    assert "63.55" in table[1] and "0.4115" in table[1] and "80.31" in table[1]
    rows = format_table({"a": results, "b": {"semseg": {"mIoU": 1.0}}}).splitlines()
    assert len(rows) == 3 and rows[2].split()[0] == "b" and rows[2].split()[-1] == "-"


def test_delta_m_with_explicit_directions():
    # a task unknown to MAIN_METRIC needs its direction
    assert multi_task_delta({"x": 8.0}, {"x": 10.0}, {"x": False}) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="unknown direction"):
        multi_task_delta({"x": 8.0}, {"x": 10.0})


def test_build_metric_picks_the_metric_and_its_options():
    from tiger.metrics import BoundaryF, DepthRMSE, MeanIoU, NormalsError, SaliencyMaxF, build_metric
    from tiger.tasks import make_task

    assert isinstance(build_metric(make_task("semseg", num_classes=40), "nyud"), MeanIoU)
    assert build_metric(make_task("semseg", num_classes=21), "pascal").num_classes == 21
    assert build_metric(make_task("human_parts"), "pascal").num_classes == 7
    assert build_metric(make_task("edge"), "nyud").max_dist == 0.011
    assert build_metric(make_task("edge"), "pascal").max_dist == 0.0075
    assert isinstance(build_metric(make_task("edge"), "synthetic"), BoundaryF)
    assert build_metric(make_task("sal", double_sigmoid=True), "pascal").double_sigmoid
    assert build_metric(make_task("edge", workers=3), "pascal").workers == 3
    assert build_metric(make_task("edge", matching="maximum"), "nyud").matching == "maximum"
    assert build_metric(make_task("edge"), "nyud").matching == "bsds"
    with pytest.raises(
        TypeError, match="task 'depth' \\(Depth\\) has no option 'double_sigmoid'; its options: none"
    ):
        make_task("depth", double_sigmoid=True)
    assert isinstance(build_metric(make_task("sal"), "pascal"), SaliencyMaxF)
    assert isinstance(build_metric(make_task("normals"), "nyud"), NormalsError)
    assert isinstance(build_metric(make_task("depth"), "nyud"), DepthRMSE)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_metric(make_task("depth"), "cityscapes")

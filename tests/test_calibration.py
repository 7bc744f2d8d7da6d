"""Batchnorm calibration statistics for Net2Deeper in the search (`search/calibration.py`): measured once on
the parent, carried through a child's passes, equal to what measuring the child gives."""

import numpy as np

def test_calibration_statistics_carried_through_passes_equal_the_ones_measured_on_the_child():
    from easc.passes.manager import PassManager
    from easc.passes.deepen import calibration_stats
    from easc.search.calibration import CalibrationStats
    from easc.search.start_nets import eas_small

    parent = eas_small((3, 16, 16))
    images = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    carried = CalibrationStats()
    carried.stats(parent, "relu_1", images)  # measures the parent once
    manager = PassManager(parent, seed=0)
    for name, args in (("widen", dict(layer="conv_1", width=24)), ("deepen", dict(after="relu_1")),
                       ("widen", dict(layer="conv_2", width=40))):
        before = manager.graph
        carried.transport(before, manager.run(name, **args))
    child = manager.graph
    for value in ("relu_1", "deepen_relu_1_bn", "relu_2"):
        mean, var = carried.stats(child, value, images)
        true_mean, true_var = calibration_stats(child, value, images)
        np.testing.assert_allclose(mean, true_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, true_var, rtol=1e-4, atol=1e-5)

"""What a version holds (service/packages.py): package lists, their diff, the summary line."""

from types import SimpleNamespace

from tljh_repo2docker.service import packages


def pkg(name, version, manager="pip"):
    return {"name": name, "version": version, "manager": manager}


def test_names_compare_like_pep_503_for_pip_and_conda():
    assert packages.normalised_name("Scikit_Learn", "pip") == "scikit-learn"
    assert packages.normalised_name("ruamel.yaml", "conda") == "ruamel-yaml"
    assert packages.normalised_name("Rcpp", "cran") == "rcpp"
    assert packages.normalised_name("lib.x_y", "apt") == "lib.x_y"


def test_diff_added_removed_changed():
    old = [pkg("numpy", "1.26.0"), pkg("pandas", "2.1.0"), pkg("requests", "2.31.0"),
           pkg("python", "3.11.6", "conda")]
    new = [pkg("NumPy", "2.0.0"), pkg("pandas", "2.1.0"), pkg("scipy", "1.13.0"),
           pkg("python", "3.12.1", "conda"), pkg("requests", "2.31.0", "conda")]
    diff = packages.diff(old, new)
    assert diff["added"] == [pkg("requests", "2.31.0", "conda"), pkg("scipy", "1.13.0")]
    assert diff["removed"] == [pkg("requests", "2.31.0")]  # the same name, another manager
    assert diff["changed"] == [
        {"name": "python", "manager": "conda", "from": "3.11.6", "to": "3.12.1"},
        {"name": "NumPy", "manager": "pip", "from": "1.26.0", "to": "2.0.0"},
    ]


def test_diff_of_equal_and_unknown_lists():
    same = [pkg("numpy", "1.0")]
    assert packages.diff(same, list(same)) == {"added": [], "removed": [], "changed": []}
    assert packages.diff(None, same)["added"] == same
    assert packages.diff(same, None)["removed"] == same


def test_malformed_entries_are_left_out():
    stored = [pkg("ok", "1"), {"name": ""}, {"version": "1"}, "text", None, {"name": "n", "version": 2}]
    assert packages.clean_packages(stored) == [
        {"name": "n", "version": "2", "manager": None}, pkg("ok", "1"),
    ]
    assert packages.clean_packages(None) is None
    assert packages.clean_packages({"not": "a list"}) is None


def version(inside=None, packages_=None):
    return SimpleNamespace(inside=inside, packages=packages_)


def test_packages_answer():
    answer = packages.packages_answer(version(packages_=[pkg("b", "1"), pkg("a", "2")]))
    assert answer == {"packages": [pkg("a", "2"), pkg("b", "1")], "known": True}
    unknown = packages.packages_answer(version())
    assert unknown["packages"] == [] and unknown["known"] is False and unknown["message"]


def test_diff_answer_says_when_a_list_is_not_known():
    answer = packages.diff_answer(version(), version(packages_=[pkg("a", "1")]))
    assert answer["added"] == [pkg("a", "1")] and answer["known"] is False and answer["message"]
    answer = packages.diff_answer(version(packages_=[]), version(packages_=[]))
    assert answer == {"added": [], "removed": [], "changed": [], "known": True}


def test_summary():
    inside = {"build_pack": "CondaBuildPack", "python": "3.12.4", "r": None, "repo2docker": "2025.12.0"}
    assert packages.summary(inside, 143) == "Python 3.12 · 143 packages"
    assert packages.summary({"python": "3.11", "r": "4.3.1"}, 1) == "Python 3.11 · R 4.3 · 1 package"
    assert packages.summary({"build_pack": "DockerBuildPack"}, None) == "DockerBuildPack"
    assert packages.summary(None, 0) == "0 packages"
    assert packages.summary(None, None) is None
    assert packages.summary("junk", True) is None
    assert packages.summary_of(None) is None
    assert packages.summary_of(version(inside, [pkg("a", "1")] * 3)) == "Python 3.12 · 3 packages"

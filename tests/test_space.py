"""Search-space files: the shipped ones parse and sample valid networks; bad ones fail in one clear line."""
import optuna
import pytest

from dlasearch.search import space
from dlasearch.cli import main
from dlasearch import compile
from dlasearch.patterns import build

SHIPPED = ["skip", "ida", "hda", "dla", "figure1", "compact"]


def test_shipped_spaces_are_present():
    assert set(SHIPPED) <= set(space.available())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_samples_compilable_specs(name):
    sp = space.load(name)
    assert sp["data"]["name"] == "digits"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                directions=["maximize"] * len(sp["objectives"]))
    for _ in range(4):
        trial = study.ask()
        spec = space.sample(sp, trial)
        spec.update(in_channels=1, num_classes=10)
        net = compile(build(spec))
        assert net(__import__("torch").randn(2, 1, 32, 32)).shape == (2, 10)
        study.tell(trial, [0.5] * len(sp["objectives"]))


def test_figure1_space_shares_the_backbone():
    sp = space.load("figure1")
    specs = []
    for pattern in ["chain", "skip", "ida", "tree", "reentrant", "hda"]:
        t = optuna.trial.FixedTrial({"pattern": pattern, "width": 32})
        specs.append(space.sample(sp, t))
    assert len({str(s["stages"]) for s in specs}) == 1
    assert [s["pattern"] for s in specs] == ["chain", "skip", "ida", "tree", "reentrant", "hda"]


def test_per_stage_parameters_are_namespaced():
    sp = space.load("dla")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    t = study.ask()
    spec = space.sample(sp, t)
    assert {f"stage{i}.levels" for i in range(len(spec["stages"]))} <= set(t.params)
    assert ("cardinality" in t.params) == (t.params["block"] == "bottleneckx")


def test_published_configs_that_fit_are_seeded():
    names = [p["name"] for p in space.published_params(space.load("dla"))]
    assert "dla34" in names and "dla60" not in names  # dla60's 1024 widths are outside the space
    assert space.published_params(space.load("skip")) == []


def test_overrides_merge_with_shortcuts():
    sp = space.load("hda", space.expand_shortcuts({"trials": 3, "epochs": 2, "budget": {"params": 1000}}))
    assert sp["study"]["trials"] == 3 and sp["train"]["epochs"] == 2 and sp["budget"]["params"] == 1000


@pytest.mark.parametrize("override,msg", [
    ({"trainn": {"epochs": 1}}, "unknown key (did you mean 'train'?)"),
    ({"train": {"epocs": 1}}, "train.epocs: unknown key (did you mean 'epochs'?)"),
    ({"params": {"widht": {"choices": [8]}}}, "params.widht: unknown parameter (did you mean 'width'?)"),
    ({"params": {"width": {"low": 64, "high": 16}}}, "empty range: low=64 > high=16"),
    ({"params": {"width": {"choices": []}}}, "must be a non-empty list"),
    ({"params": {"width": {"choices": ["wide"]}}}, "'wide' must be an int >= 1"),
    ({"params": {"pattern": {"choices": ["fpn"]}}}, "'fpn' is not allowed"),
    ({"params": {"cardinality": {"choices": [4], "when": {"stages": 3}}}},
     "conditional on 'stages', which is not a searched parameter"),
    ({"params": {"width": {"choices": [8], "low": 4, "high": 8}}}, "give exactly one of"),
    ({"train": {"epochs": "many"}}, "train.epochs: 'many' has the wrong type; expected int"),
    ({"train": {"epochs": 0}}, "train.epochs: 0 must be >= 1"),
    ({"study": {"sampler": "tpee"}}, "study.sampler: 'tpee' (did you mean 'tpe'?)"),
    ({"objectives": ["accuracy"]}, "objectives: ['accuracy'] invalid"),
    ({"budget": {"params": -5}}, "budget.params: -5 must be positive"),
])
def test_bad_space_errors(override, msg):
    sp = space.load("hda")
    raw = {k: sp[k] for k in space.SCHEMA if k in sp}
    with pytest.raises(space.SpaceError) as e:
        space.validate(space._merge(raw, override))
    assert msg in str(e.value)


def test_unknown_space_name():
    with pytest.raises(space.SpaceError, match="space 'hdaa' not found .*did you mean 'hda'"):
        space.load("hdaa")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("params: [unclosed\n")
    with pytest.raises(space.SpaceError, match="not valid YAML"):
        space.load(str(p))


def test_cli_bad_override_is_one_line(capsys):
    assert main(["run", "space=hda", "train.epocs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'train.epochs'" in err and len(err.splitlines()) == 1


def _pattern_choices(name: str) -> list:
    return space.load(name)["params"].get("pattern", {}).get("choices", [])


COMPARING = [name for name in SHIPPED if len(_pattern_choices(name)) >= 2]


def test_some_shipped_space_compares_patterns():
    assert "figure1" in COMPARING


@pytest.mark.parametrize("name", COMPARING)
def test_every_pattern_choice_is_a_distinct_network(name):
    """A space that offers several patterns must build a different network for each one at every setting."""
    from dlasearch.ir import fingerprint

    sp = space.load(name)
    choices = _pattern_choices(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(6):
        spec = space.sample(sp, study.ask())
        prints = {p: fingerprint(build({**spec, "pattern": p, "in_channels": 1, "num_classes": 10}))
                  for p in choices}
        assert len(set(prints.values())) == len(choices), (spec["stages"], prints)


def test_space_sets_threads_flip_and_a_training_seed_apart_from_the_split():
    from dlasearch.search import load_data
    from dlasearch.search.objective import Objective

    sp = space.load("hda", {"threads": 1, "data": {"flip": True, "limit": 200}, "train": {"seed": 7}})
    assert sp["study"]["threads"] == 1
    data = load_data(sp)
    assert data.flip is True  # digits would not flip by default
    assert Objective(sp, data, log=lambda *a: None)._config().seed == 7  # training seed 7, split seed 0
    assert Objective(sp, data, log=lambda *a: None)._eval_epochs() == {1, 3}  # hyperband's rungs in 4 epochs
    unpruned = space.load("hda", {"pruner": "none", "train": {"epochs": 3}, "data": {"limit": 200}})
    assert Objective(unpruned, data, log=lambda *a: None)._eval_epochs() == set()  # only the last is read
    assert load_data(space.load("hda", {"data": {"limit": 200}})).y_val.tolist() == data.y_val.tolist()
    with pytest.raises(space.SpaceError, match="study.threads"):
        space.load("hda", {"threads": 0})

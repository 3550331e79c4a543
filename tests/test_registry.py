"""cnnkit._registry: the one registry mechanism behind explainers, initialisers, layouts and named networks."""

from __future__ import annotations

import pytest
from torch import nn

import cnnkit
import cnnkit.init
import cnnkit.keras
from cnnkit._registry import NameRegistry, TypeRegistry
from cnnkit.errors import ArgumentTypeError, UnsupportedError


class Base(nn.Module):
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Other(nn.Module):
    pass


def test_lookup_walks_the_mro_and_the_nearest_class_wins():
    registry = TypeRegistry[str]("thing")
    registry.register(Base, value="base")
    # Instances and classes alike; a subclass inherits, until it registers its own.
    assert [registry.find(x) for x in (Base(), Child(), GrandChild, Other())] == ["base", "base", "base", None]
    registry.register(Child, value="child")
    assert [registry.find(x) for x in (Base, Child(), GrandChild())] == ["base", "child", "child"]
    registry.register(Base, Other, value="again")  # a later registration replaces one; several types at once
    assert [registry.find(x) for x in (Base(), Child(), Other())] == ["again", "child", "again"]
    assert Other() in registry and nn.ReLU() not in registry


def test_the_decorator_registers_and_returns_the_value_unchanged():
    registry = TypeRegistry[object]("thing")

    def fn():
        return 1

    assert registry.registering(Base, Other)(fn) is fn
    assert registry.find(Child()) is fn and registry.find(Other) is fn


def test_require_names_the_known_classes():
    registry = TypeRegistry[str]("Keras weight layout")
    registry.register(Other, Base, value="x")
    with pytest.raises(UnsupportedError, match=r"^No Keras weight layout is known for ReLU\. Known: Base, Other\.$"):
        registry.require(nn.ReLU())
    assert registry.require(GrandChild) == "x"
    assert registry.known() == ["Base", "Other"]


@pytest.mark.parametrize("types", [(), ("Conv2d",), (nn.Conv2d, nn.Conv2d(1, 1, 1))])
def test_registering_anything_but_classes_is_refused_at_once(types):
    registry = TypeRegistry[str]("explainer")
    with pytest.raises(ArgumentTypeError, match=r"explainer registry needs one or more classes"):
        registry.register(*types, value="x")
    with pytest.raises(ArgumentTypeError, match=r"explainer registry needs one or more classes"):
        registry.registering(*types)  # before any function is decorated
    assert registry.known() == []


def test_name_registry_reads_like_a_dict():
    registry = NameRegistry[int]("network")
    registry.register("b", 2)
    assert registry.registering("a")(1) == 1
    assert dict(registry) == {"b": 2, "a": 1} and sorted(registry) == ["a", "b"] and len(registry) == 2
    assert "a" in registry and "c" not in registry and registry.get("c") is None
    with pytest.raises(KeyError):
        registry["c"]
    with pytest.raises(UnsupportedError, match=r"^Unknown network 'c'\. Expected one of \('a', 'b'\)\.$"):
        registry.require("c")
    registry.register("a", 3)
    assert registry["a"] == 3
    for bad in ("", None, 3):
        with pytest.raises(ArgumentTypeError, match="non-empty string"):
            registry.register(bad, 0)


def test_the_three_public_registries_share_the_mechanism():
    # register_* of each room reaches its own table; subclasses inherit through the MRO in all three.
    class MyConv(nn.Conv2d):
        pass

    assert cnnkit.explainers.find_explainer(MyConv(1, 1, 1)) is cnnkit.explainers.find_explainer(nn.Conv2d(1, 1, 1))
    assert cnnkit.init.find_initializer(MyConv(1, 1, 1)) is cnnkit.init.find_initializer(nn.Conv2d(1, 1, 1))
    assert cnnkit.keras.find_layout(MyConv(1, 1, 1)) is cnnkit.keras.find_layout(nn.Conv2d(1, 1, 1)) is not None

    @cnnkit.register_explainer(MyConv)
    def _explain(module, input_shape):
        return cnnkit.explainers.LayerReport((7,), ["mine"])

    assert cnnkit.explain(MyConv(1, 1, 1), (1, 4, 4)).output_shape == (7,)
    assert cnnkit.explain(nn.Conv2d(1, 1, 1), (1, 4, 4)).output_shape == (1, 4, 4)
    with pytest.raises(ArgumentTypeError):
        cnnkit.register_explainer("Conv2d")
    with pytest.raises(UnsupportedError, match="No Keras weight layout is known for ReLU"):
        cnnkit.keras.keras_shapes(nn.ReLU())

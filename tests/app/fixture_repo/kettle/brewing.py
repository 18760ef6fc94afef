"""Brewing tasting samples: how long each kind of tea steeps and how hot the water is."""

STEEP_SECONDS = {"green": 120, "black": 240, "oolong": 180, "white": 150}
WATER_CELSIUS = {"green": 80, "black": 95, "oolong": 90, "white": 85}


def steep_time(tea: str) -> int:
    """Seconds to steep a sample of `tea`; unknown teas get the black-tea time."""
    return STEEP_SECONDS.get(tea, STEEP_SECONDS["black"])


def water_temperature(tea: str) -> int:
    """Water temperature in degrees Celsius for `tea`."""
    return WATER_CELSIUS.get(tea, 95)

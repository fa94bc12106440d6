"""ratesvc: shipping rates and labels for Cin7 Core sales through ShipStation."""

__version__ = "0.1.0"

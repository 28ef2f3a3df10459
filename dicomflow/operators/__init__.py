"""Operators: plain, picklable ``batch -> batch`` functions. One module per operator."""

from dicomflow.operators.base import Operator, map_records
from dicomflow.operators.flatten import Flatten

__all__ = ["Flatten", "Operator", "map_records"]

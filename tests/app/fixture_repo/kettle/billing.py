"""Invoices for wholesale customers, with the late fee charged on overdue invoices."""

from dataclasses import dataclass

LATE_FEE_RATE = 0.035  # 3.5 percent of the amount, per started week overdue


@dataclass
class Invoice:
    customer: str
    amount: float
    days_overdue: int = 0


def late_fee(invoice: Invoice) -> float:
    """The late fee: 3.5% of the amount for every started week past the due date."""
    weeks = -(-invoice.days_overdue // 7)
    return round(invoice.amount * LATE_FEE_RATE * weeks, 2)

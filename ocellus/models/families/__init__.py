"""Model families, one folder each (modeling.py, checkpoint.py, processor.py), named piece by piece in the
registry (ocellus/hub/families.py); common.py holds what they share. docs/ADDING_A_MODEL.md adds one."""

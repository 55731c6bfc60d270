"""Layer importance: which Conformer blocks are ambient (resettable) and which are critical."""

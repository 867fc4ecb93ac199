"""The feedback collector: turns feedback events into versioned SFT and preference datasets."""

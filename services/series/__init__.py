"""Series: consultations planned across several countries, and their progress."""

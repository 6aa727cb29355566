//! Placeholder until candle-lm declares its descriptor.

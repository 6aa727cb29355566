//! The built-in vocabulary: common, short, lower-case English words.
//!
//! Small on purpose: a tiny model and a tiny tokenizer must see every word many times in a corpus of a few
//! thousand lines, and the word-based families must have enough distinct words to keep their held-out tasks
//! apart from the training ones. Changing this list changes every output: bump the built-in's revision.

/// Lower-case ASCII words, each once.
pub(super) const WORDS: &[&str] = &[
    "apple", "river", "planet", "garden", "window", "basket", "candle", "forest", "yellow", "silver", "orange",
    "guitar", "pencil", "rabbit", "turtle", "dragon", "castle", "bridge", "market", "sugar", "butter", "cookie",
    "pepper", "lemon", "cherry", "banana", "grape", "melon", "peach", "tomato", "potato", "carrot", "onion", "bread",
    "cheese", "honey", "coffee", "water", "juice", "milk", "soup", "salad", "pizza", "table", "chair", "sofa", "lamp",
    "mirror", "carpet", "pillow", "blanket", "kitchen", "door", "roof", "wall", "floor", "stairs", "garage", "school",
    "teacher", "student", "doctor", "farmer", "sailor", "pilot", "artist", "singer", "dancer", "baker", "driver",
    "friend", "mother", "father", "sister", "brother", "uncle", "cousin", "baby", "child", "family", "village", "city",
    "country", "island", "mountain", "valley", "desert", "ocean", "lake", "beach", "cloud", "rain", "snow", "storm",
    "thunder", "winter", "summer", "spring", "autumn", "morning", "evening", "night", "today", "sunday", "monday",
    "music", "story", "poem", "letter", "paper", "book", "page", "picture", "camera", "phone", "clock", "watch",
    "ticket", "money", "coin", "wallet", "pocket", "shirt", "jacket", "shoe", "boot", "glove", "scarf", "hat",
    "button", "needle", "thread", "circle", "square", "triangle", "number", "answer", "question", "reason", "idea",
    "dream", "secret", "promise", "journey", "travel", "horse", "tiger", "lion", "monkey", "zebra", "camel", "donkey",
    "goat", "sheep", "chicken", "duck", "eagle", "parrot", "owl", "spider", "bee", "ant", "frog", "snake", "whale",
    "shark", "dolphin", "salmon", "penguin", "kitten", "puppy", "mouse", "flower", "tree", "leaf", "root", "seed",
    "grass", "stone", "metal", "gold", "wood", "glass", "plastic", "cotton", "wool", "red", "blue", "green", "purple",
    "black", "white", "brown", "pink", "happy", "quiet", "brave", "clever", "gentle", "honest", "simple", "strong",
    "little", "bright", "dark", "warm", "cold", "fresh", "sweet", "bitter", "early", "late", "quick", "slow", "heavy",
    "light", "small", "large", "round", "sharp", "soft", "empty", "full", "open", "close", "jump", "swim", "climb",
    "dance", "sing", "write", "read", "paint", "cook", "clean", "build", "carry", "throw", "catch", "listen", "speak",
    "laugh", "smile", "sleep", "wander", "train", "truck", "rocket", "boat", "engine", "wheel", "ladder", "hammer",
    "shovel", "bucket", "rope", "anchor", "compass", "lantern", "helmet", "shield", "arrow", "tower", "temple",
    "palace", "harbor", "meadow", "canyon",
];

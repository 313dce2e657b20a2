//! Which of a card's inputs a frame has. One bit per card input (a card has at most
//! [`MAX_INPUTS`]), so that every frame's set is made, compared and looked up without allocating.

use crate::card::{Card, MAX_INPUTS};

const _: () = assert!(MAX_INPUTS <= u64::BITS as usize, "one bit per card input");

/// A set of card inputs, by their index in the card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Present(u64);

impl Present {
    /// Every one of `count` inputs.
    pub const fn all(count: usize) -> Present {
        if count >= 64 { Present(u64::MAX) } else { Present((1 << count) - 1) }
    }

    /// The set with input `index` added.
    pub const fn with(self, index: usize) -> Present {
        debug_assert!(index < MAX_INPUTS);
        Present(self.0 | 1 << index)
    }

    pub const fn contains(self, index: usize) -> bool {
        index < MAX_INPUTS && self.0 & (1 << index) != 0
    }

    /// The inputs of `card` that `names` name; names the card does not have are left out.
    pub fn of_names(card: &Card, names: &[String]) -> Present {
        card.inputs
            .iter()
            .enumerate()
            .filter(|(_, input)| names.contains(&input.name))
            .fold(Present::default(), |set, (index, _)| set.with(index))
    }

    /// The names of the inputs in the set, in card order.
    pub fn names(self, card: &Card) -> Vec<&str> {
        card.inputs
            .iter()
            .enumerate()
            .filter(|&(index, _)| self.contains(index))
            .map(|(_, input)| input.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_the_inputs_they_are_made_of() {
        assert_eq!(Present::all(3), Present::default().with(0).with(1).with(2));
        assert!(Present::all(64).contains(63));
        assert!(!Present::all(3).contains(3));
        assert!(!Present::all(64).contains(64), "past the last input is never present");
        let set = Present::default().with(2);
        assert!(set.contains(2) && !set.contains(0));
    }
}

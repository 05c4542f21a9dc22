//! A fair queue: one FIFO lane per submitter, served round-robin, so a
//! client that queues a hundred jobs delays another client's one job by at
//! most one job per worker.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct FairQueue<T> {
    /// Lanes in serving order; the front lane is served next.
    lanes: VecDeque<(String, VecDeque<T>)>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            lanes: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, submitter: &str, item: T) {
        match self.lanes.iter_mut().find(|(owner, _)| owner == submitter) {
            Some((_, lane)) => lane.push_back(item),
            None => self
                .lanes
                .push_back((submitter.to_owned(), VecDeque::from([item]))),
        }
        self.len += 1;
    }

    /// The next item: the front of the front lane, whose lane then goes to
    /// the back.
    pub fn pop(&mut self) -> Option<T> {
        let (owner, mut lane) = self.lanes.pop_front()?;
        let item = lane.pop_front();
        if !lane.is_empty() {
            self.lanes.push_back((owner, lane));
        }
        self.len -= usize::from(item.is_some());
        item
    }

    /// Takes out the first item `matches` accepts.
    pub fn remove(&mut self, matches: impl Fn(&T) -> bool) -> Option<T> {
        for index in 0..self.lanes.len() {
            let lane = &mut self.lanes[index].1;
            if let Some(position) = lane.iter().position(&matches) {
                let item = lane.remove(position);
                if lane.is_empty() {
                    self.lanes.remove(index);
                }
                self.len -= 1;
                return item;
            }
        }
        None
    }

    /// The items of one submitter.
    pub fn items_of<'a>(&'a self, submitter: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        self.lanes
            .iter()
            .filter(move |(owner, _)| owner == submitter)
            .flat_map(|(_, lane)| lane.iter())
    }

    /// Every item with its submitter, in the order they would be served.
    pub fn in_order(&self) -> Vec<(&str, &T)> {
        let mut order = Vec::with_capacity(self.len);
        let mut round = 0;
        while order.len() < self.len {
            for (owner, lane) in &self.lanes {
                if let Some(item) = lane.get(round) {
                    order.push((owner.as_str(), item));
                }
            }
            round += 1;
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitters_are_served_in_turn_each_in_its_own_order() {
        let mut queue = FairQueue::default();
        for job in 1..=4 {
            queue.push("greedy", format!("g{job}"));
        }
        queue.push("polite", "p1".to_owned());
        queue.push("other", "o1".to_owned());
        queue.push("polite", "p2".to_owned());
        let planned: Vec<String> = queue
            .in_order()
            .into_iter()
            .map(|(_, job)| job.clone())
            .collect();
        assert_eq!(planned, ["g1", "p1", "o1", "g2", "p2", "g3", "g4"]);
        let mut served = Vec::new();
        while let Some(job) = queue.pop() {
            served.push(job);
        }
        assert_eq!(served, planned);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn removal_keeps_the_rest_in_order() {
        let mut queue = FairQueue::default();
        queue.push("a", 1);
        queue.push("b", 2);
        queue.push("a", 3);
        assert_eq!(queue.remove(|&item| item == 2), Some(2));
        assert_eq!(queue.remove(|&item| item == 9), None);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop(), Some(1));
        assert_eq!(queue.pop(), Some(3));
        assert_eq!(queue.pop(), None);
    }
}

//! Sets of TCP ports as sorted, disjoint, inclusive ranges: what a rule's `ports` allow after
//! the denies that cover it took theirs away (`ports` omitted is every port, 1..=65535).

/// Ports 1..=65535 as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn all() -> Self {
        PortSet(vec![(1, u16::MAX)])
    }

    /// A rule's `ports`: `None` is every port.
    pub fn of(ports: Option<&[u16]>) -> Self {
        match ports {
            None => PortSet::all(),
            Some(ports) => PortSet::from_ranges(ports.iter().map(|&p| (p, p))),
        }
    }

    fn from_ranges(ranges: impl IntoIterator<Item = (u16, u16)>) -> Self {
        let mut ranges: Vec<(u16, u16)> = ranges.into_iter().filter(|(a, b)| a <= b && *a > 0).collect();
        ranges.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match out.last_mut() {
                Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        PortSet(out)
    }

    pub fn is_all(&self) -> bool {
        self.0 == [(1, u16::MAX)]
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= port && port <= b)
    }

    pub fn intersects(&self, other: &PortSet) -> bool {
        self.0.iter().any(|&(a, b)| other.0.iter().any(|&(c, d)| a <= d && c <= b))
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet::from_ranges(self.0.iter().chain(&other.0).copied())
    }

    /// The ports of `self` not in `other`.
    pub fn subtract(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            let mut start = a as u32;
            let end = b as u32;
            for &(c, d) in &other.0 {
                let (c, d) = (c as u32, d as u32);
                if d < start || c > end {
                    continue;
                }
                if c > start {
                    out.push((start as u16, (c - 1) as u16));
                }
                start = d + 1;
                if start > end {
                    break;
                }
            }
            if start <= end {
                out.push((start as u16, end as u16));
            }
        }
        PortSet(out)
    }

    /// Every port, one by one (for sets of a few explicit ports; `None` when it spans ranges of
    /// more than `limit` ports in all).
    pub fn ports(&self, limit: usize) -> Option<Vec<u16>> {
        let count: usize = self.0.iter().map(|&(a, b)| (b - a) as usize + 1).sum();
        (count <= limit).then(|| self.0.iter().flat_map(|&(a, b)| a..=b).collect())
    }
}

impl std::fmt::Display for PortSet {
    /// `[443]`, `[1-21, 23-65535]`, `any`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            return f.write_str("any");
        }
        let parts: Vec<String> =
            self.0.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_and_union() {
        let all = PortSet::all();
        let admin = PortSet::of(Some(&[22, 3389]));
        let left = all.subtract(&admin);
        assert_eq!(left.ranges(), &[(1, 21), (23, 3388), (3390, 65535)]);
        assert!(!left.contains(22) && left.contains(443));
        assert_eq!(left.union(&admin), all);
        assert!(PortSet::of(Some(&[22])).subtract(&admin).is_empty());
        assert_eq!(PortSet::of(Some(&[443, 22])).subtract(&admin), PortSet::of(Some(&[443])));
        assert_eq!(PortSet::of(Some(&[1, 2, 3])).ranges(), &[(1, 3)]);
        assert_eq!(all.subtract(&PortSet::of(Some(&[1, 65535]))).ranges(), &[(2, 65534)]);
        assert_eq!(left.to_string(), "[1-21, 23-3388, 3390-65535]");
        assert_eq!(PortSet::of(Some(&[443, 80])).ports(10), Some(vec![80, 443]));
        assert_eq!(all.ports(10), None);
        assert!(admin.intersects(&all) && !admin.intersects(&PortSet::of(Some(&[443]))));
    }
}

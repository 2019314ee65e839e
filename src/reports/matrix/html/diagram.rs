//! The services-to-destinations diagram, inline SVG: services in a left column, the registrable
//! domains and CIDRs their allows reach in a right column, a line per dependency (thicker for
//! more rules). Denies are left out: a deny is not a dependency, and the table lists them. The
//! size follows the counts (a row per node of the longer column, columns as wide as their longest
//! label), so fifty services stay one readable column instead of overlapping.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::super::ServiceSummary;
use super::esc;

const ROW: usize = 22;
const TOP: usize = 34;
const PAD: usize = 12;
/// Between the two columns of nodes: room for the lines to fan out.
const GAP: usize = 280;
/// An upper bound of the average width of a 12px label character, so labels never overflow.
const CHAR: usize = 7;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DestKind {
    Domain,
    Cidr,
}

struct Layout {
    left_x: usize,
    right_x: usize,
    width: usize,
    height: usize,
    left_top: usize,
    right_top: usize,
}

pub fn svg(services: &[ServiceSummary]) -> String {
    let destinations = destinations(services);
    let layout = layout(services, &destinations);
    let mut out = String::new();
    out.push_str(
        "<p class=\"legend\">A line per dependency: a service's allows to a registrable domain \
         (<span class=\"domain\">&#9679;</span>) or an address range (<span class=\"cidr\">&#9679;</span>), \
         thicker for more rules. Denies are not drawn (see the table). Click a service or a destination \
         to filter the table.</p>\n",
    );
    let _ = writeln!(
        out,
        "<svg id=\"diagram\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"services and the third parties they depend on\" \
         width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">",
        w = layout.width,
        h = layout.height
    );
    let _ = writeln!(
        out,
        "<text class=\"heading\" x=\"{}\" y=\"16\" text-anchor=\"end\">{}</text>\
         <text class=\"heading\" x=\"{}\" y=\"16\">{}</text>",
        layout.left_x,
        heading("services", services.len()),
        layout.right_x,
        heading("destinations", destinations.len())
    );
    edges(&mut out, services, &destinations, &layout);
    service_nodes(&mut out, services, &layout);
    destination_nodes(&mut out, &destinations, &layout);
    out.push_str("</svg>\n");
    out
}

/// Every destination some service allows: domains by name, then CIDRs, each once.
fn destinations(services: &[ServiceSummary]) -> Vec<(DestKind, &str)> {
    let mut all: BTreeMap<(DestKind, &str), ()> = BTreeMap::new();
    for s in services {
        for d in &s.domains {
            all.insert((DestKind::Domain, d.name.as_str()), ());
        }
        for c in &s.cidrs {
            all.insert((DestKind::Cidr, c.name.as_str()), ());
        }
    }
    all.into_keys().collect()
}

fn layout(services: &[ServiceSummary], destinations: &[(DestKind, &str)]) -> Layout {
    // Each column is as wide as its longest label or its heading (`destinations (12)`, bold).
    let longest =
        |heading: String, lens: &mut dyn Iterator<Item = usize>| lens.max().unwrap_or(0).max(heading.len() + 2) * CHAR;
    let left_label =
        longest(heading("services", services.len()), &mut services.iter().map(|s| s.service.chars().count()));
    let right_label =
        longest(heading("destinations", destinations.len()), &mut destinations.iter().map(|(_, d)| d.chars().count()));
    let rows = services.len().max(destinations.len()).max(1);
    let left_x = PAD + left_label + 8;
    let right_x = left_x + GAP;
    // The shorter column is centred against the longer one.
    let centred = |n: usize| TOP + (rows - n.min(rows)) * ROW / 2;
    Layout {
        left_x,
        right_x,
        width: right_x + 8 + right_label + PAD,
        height: TOP + rows * ROW + PAD,
        left_top: centred(services.len()),
        right_top: centred(destinations.len()),
    }
}

fn heading(what: &str, count: usize) -> String {
    format!("{what} ({count})")
}

fn y(top: usize, i: usize) -> usize {
    top + i * ROW + ROW / 2
}

fn edges(out: &mut String, services: &[ServiceSummary], destinations: &[(DestKind, &str)], l: &Layout) {
    let index: BTreeMap<(DestKind, &str), usize> = destinations.iter().enumerate().map(|(i, &d)| (d, i)).collect();
    let mid = (l.left_x + l.right_x) / 2;
    for (si, s) in services.iter().enumerate() {
        let deps = s.domains.iter().map(|d| (DestKind::Domain, d)).chain(s.cidrs.iter().map(|c| (DestKind::Cidr, c)));
        for (kind, dep) in deps {
            let Some(&di) = index.get(&(kind, dep.name.as_str())) else { continue };
            let (y1, y2) = (y(l.left_top, si), y(l.right_top, di));
            let _ = writeln!(
                out,
                "<path class=\"edge {}\" stroke-width=\"{}\" d=\"M{} {y1} C{mid} {y1} {mid} {y2} {} {y2}\">\
                 <title>{} \u{2192} {}: {} rule(s)</title></path>",
                kind_class(kind),
                1 + dep.rules.min(4),
                l.left_x + 5,
                l.right_x - 5,
                esc(&s.service),
                esc(&dep.name),
                dep.rules
            );
        }
    }
}

fn service_nodes(out: &mut String, services: &[ServiceSummary], l: &Layout) {
    for (i, s) in services.iter().enumerate() {
        let cy = y(l.left_top, i);
        let owner = s.owner.as_deref().map(|o| format!(" ({})", esc(o))).unwrap_or_default();
        let _ = writeln!(
            out,
            "<g class=\"node service\" data-filter=\"{name}\"><title>{name}{owner}, {mode}: {} allow(s), {} deny(s)</title>\
             <circle cx=\"{x}\" cy=\"{cy}\" r=\"4\"/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{name}</text></g>",
            s.allows,
            s.denies,
            name = esc(&s.service),
            mode = s.mode,
            x = l.left_x,
            tx = l.left_x - 8,
            ty = cy + 4
        );
    }
}

fn destination_nodes(out: &mut String, destinations: &[(DestKind, &str)], l: &Layout) {
    for (i, (kind, name)) in destinations.iter().enumerate() {
        let cy = y(l.right_top, i);
        let _ = writeln!(
            out,
            "<g class=\"node {}\" data-filter=\"{name}\"><title>{name}</title><circle cx=\"{x}\" cy=\"{cy}\" r=\"4\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{name}</text></g>",
            kind_class(*kind),
            name = esc(name),
            x = l.right_x,
            tx = l.right_x + 8,
            ty = cy + 4
        );
    }
}

fn kind_class(kind: DestKind) -> &'static str {
    match kind {
        DestKind::Domain => "domain",
        DestKind::Cidr => "cidr",
    }
}

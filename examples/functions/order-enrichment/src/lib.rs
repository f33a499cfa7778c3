//! Enriches JSON orders: adds each line's amount, the order's subtotal, tax and total,
//! its item count, and the customer's tier, and keys the output by customer (so a
//! customer's orders stay in one partition downstream).
//!
//! In: `{"id": "o-1", "customer": "c-7", "items": [{"sku": "tea", "qty": 2, "price": 4.5}]}`
//! Out: the same order with `items[].amount`, `subtotal`, `tax`, `total`, `item_count` and
//! `tier`, amounts rounded to cents.
//!
//! Config: `tax_rate` (a fraction, default 0), `vip_customers` (comma-separated ids whose
//! tier is `vip`; others are `regular`). An order without an `items` list fails its batch,
//! which then goes to the dead-letter topic.

use runnel_sdk::{Error, Output, Record, config, json};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct Item {
    sku: String,
    qty: u32,
    price: f64,
    #[serde(default)]
    amount: f64,
}

#[derive(Deserialize, Serialize)]
struct Order {
    id: String,
    customer: String,
    items: Vec<Item>,
    #[serde(default)]
    subtotal: f64,
    #[serde(default)]
    tax: f64,
    #[serde(default)]
    total: f64,
    #[serde(default)]
    item_count: u32,
    #[serde(default)]
    tier: String,
}

fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

#[runnel_sdk::transform]
fn enrich(record: Record<'_>) -> Result<Option<Output>, Error> {
    let mut order: Order = json::parse(&record)?;
    let tax_rate: f64 = match config::get("tax_rate") {
        Some(rate) => rate
            .parse()
            .map_err(|_| Error::new(format!("tax_rate `{rate}` is not a number")))?,
        None => 0.0,
    };
    let vips = config::get("vip_customers").unwrap_or_default();
    for item in &mut order.items {
        item.amount = cents(f64::from(item.qty) * item.price);
    }
    order.subtotal = cents(order.items.iter().map(|i| i.amount).sum());
    order.tax = cents(order.subtotal * tax_rate);
    order.total = cents(order.subtotal + order.tax);
    order.item_count = order.items.iter().map(|i| i.qty).sum();
    order.tier = if vips.split(',').any(|v| v.trim() == order.customer) {
        "vip".to_string()
    } else {
        "regular".to_string()
    };
    Ok(Some(
        Output::from_record(&record)
            .key(order.customer.clone())
            .json(&order)?,
    ))
}

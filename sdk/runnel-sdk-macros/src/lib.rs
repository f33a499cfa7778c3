//! `#[runnel_sdk::transform]`, `#[runnel_sdk::consumer]` and `#[runnel_sdk::sink]`: they
//! keep the function as written and export the component's `process` calling it, per
//! record or, with `(batch)`, per batch. `#[runnel_sdk::source]` exports `poll`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{Ident, ItemFn, parse_macro_input};

#[derive(Clone, Copy)]
enum Kind {
    Transform,
    Consumer,
    Sink,
}

/// Whether the attribute says `batch`; anything else is a compile error.
fn per_batch(attribute: TokenStream) -> Result<bool, syn::Error> {
    if attribute.is_empty() {
        return Ok(false);
    }
    let word: Ident = syn::parse(attribute)?;
    if word == "batch" {
        Ok(true)
    } else {
        Err(syn::Error::new(
            word.span(),
            "expected nothing or `batch`, as in #[transform(batch)]",
        ))
    }
}

fn expand(kind: Kind, attribute: TokenStream, item: TokenStream) -> TokenStream {
    let batch = match per_batch(attribute) {
        Ok(batch) => batch,
        Err(error) => return error.to_compile_error().into(),
    };
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let (glue, output, export) = match (kind, batch) {
        (Kind::Transform, false) => (
            quote!(transform_records),
            quote!(::std::vec::Vec<u8>),
            quote!(export_transform),
        ),
        (Kind::Transform, true) => (
            quote!(transform_batch),
            quote!(::std::vec::Vec<u8>),
            quote!(export_transform),
        ),
        (Kind::Consumer, false) => (quote!(consume_records), quote!(()), quote!(export_consumer)),
        (Kind::Consumer, true) => (quote!(consume_batch), quote!(()), quote!(export_consumer)),
        (Kind::Sink, false) => (quote!(consume_records), quote!(()), quote!(export_sink)),
        (Kind::Sink, true) => (quote!(consume_batch), quote!(()), quote!(export_sink)),
    };
    quote! {
        #function

        const _: () = {
            struct RunnelFunction;

            impl ::runnel_sdk::bindings::Guest for RunnelFunction {
                fn process(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<#output, ::std::string::String> {
                    ::runnel_sdk::__private::#glue(&batch, #name)
                }
            }

            ::runnel_sdk::bindings::#export!(RunnelFunction);
        };
    }
    .into()
}

/// A transform: `fn(Record) -> Result<impl IntoIterator<Item = Output>, Error>`, or with
/// `#[transform(batch)]`, `fn(&Batch) -> Result<impl IntoIterator<Item = Output>, Error>`.
#[proc_macro_attribute]
pub fn transform(attribute: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Transform, attribute, item)
}

/// A consumer: `fn(Record) -> Result<(), Error>`, or with `#[consumer(batch)]`,
/// `fn(&Batch) -> Result<(), Error>`.
#[proc_macro_attribute]
pub fn consumer(attribute: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Consumer, attribute, item)
}

/// A sink: `fn(Record) -> Result<(), Error>`, or with `#[sink(batch)]`,
/// `fn(&Batch) -> Result<(), Error>`. The batch's progress is committed only once it
/// returned `Ok`.
#[proc_macro_attribute]
pub fn sink(attribute: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Sink, attribute, item)
}

/// A source: `fn(cursor: Option<&[u8]>, max_records: usize) -> Result<Polled, Error>`.
#[proc_macro_attribute]
pub fn source(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[source] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    quote! {
        #function

        const _: () = {
            struct RunnelSource;

            impl ::runnel_sdk::bindings::Guest for RunnelSource {
                fn poll(
                    cursor: ::std::option::Option<::std::vec::Vec<u8>>,
                    max_records: u32,
                ) -> ::std::result::Result<::runnel_sdk::bindings::Polled, ::std::string::String> {
                    ::runnel_sdk::__private::poll(cursor, max_records, #name)
                }
            }

            ::runnel_sdk::bindings::export_source!(RunnelSource);
        };
    }
    .into()
}

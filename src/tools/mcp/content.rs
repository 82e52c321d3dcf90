//! A tool result's content blocks as the model's observation: text as text, anything else (an
//! image, audio, a binary resource) summarised by its kind and size. Base64 payloads never reach
//! the model's context: they cost tokens and tell a text model nothing.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};

use crate::text::clip;

/// Longest observation built from one result, in bytes. The executor clips again (to what it
/// stores and sends), so this only bounds the work and memory of a huge result.
pub const MAX_OBSERVATION_BYTES: usize = 256 * 1024;

/// Size in bytes of the data a base64 string encodes.
fn decoded_len(base64: &str) -> usize {
    let padding = base64.bytes().rev().take_while(|b| *b == b'=').count();
    (base64.len() / 4 * 3).saturating_sub(padding)
}

/// One block as text.
fn block_text(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(t) => t.text.clone(),
        ContentBlock::Image(i) => format!("[image: {}, {} bytes]", i.mime_type, decoded_len(&i.data)),
        ContentBlock::Audio(a) => format!("[audio: {}, {} bytes]", a.mime_type, decoded_len(&a.data)),
        ContentBlock::Resource(r) => match &r.resource {
            ResourceContents::TextResourceContents { uri, text, .. } => format!("[resource {uri}]\n{text}"),
            ResourceContents::BlobResourceContents { uri, mime_type, blob, .. } => format!(
                "[resource {uri}: {}, {} bytes]",
                mime_type.as_deref().unwrap_or("application/octet-stream"),
                decoded_len(blob)
            ),
            // A kind of resource contents newer than this code: say what it is, not what it holds.
            _ => "[resource of an unknown kind]".to_owned(),
        },
        ContentBlock::ResourceLink(link) => match &link.mime_type {
            Some(mime) => format!("[resource link {} ({}): {}]", link.uri, mime, link.name),
            None => format!("[resource link {}: {}]", link.uri, link.name),
        },
        _ => "[content of an unknown kind]".to_owned(),
    }
}

/// The observation for a result: its blocks joined by blank lines, or its structured content
/// when it has no blocks, clipped to [`MAX_OBSERVATION_BYTES`].
pub fn observation(result: &CallToolResult) -> String {
    let text = if result.content.is_empty() {
        match &result.structured_content {
            Some(value) => value.to_string(),
            None => String::new(),
        }
    } else {
        let mut out = String::new();
        for block in &result.content {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&block_text(block));
            // Stop building once far past the limit: a result may be tens of megabytes.
            if out.len() > MAX_OBSERVATION_BYTES * 2 {
                break;
            }
        }
        out
    };
    clip(&text, MAX_OBSERVATION_BYTES)
}

#[cfg(test)]
mod tests {
    use rmcp::model::{AudioContent, EmbeddedResource, ImageContent, TextContent};

    use super::*;

    fn result(blocks: Vec<ContentBlock>) -> CallToolResult {
        CallToolResult::success(blocks)
    }

    #[test]
    fn text_is_kept_and_binary_is_summarised() {
        let png = "iVBORw0KGgo=".repeat(1000);
        let r = result(vec![
            ContentBlock::Text(TextContent::new("hello")),
            ContentBlock::Image(ImageContent::new(png.clone(), "image/png")),
            ContentBlock::Audio(AudioContent::new("AAAA", "audio/wav")),
            ContentBlock::Resource(EmbeddedResource::new(ResourceContents::text("inside", "file:///a.txt"))),
            ContentBlock::Resource(EmbeddedResource::new(ResourceContents::BlobResourceContents {
                uri: "file:///b.bin".into(),
                mime_type: None,
                blob: "AAAAAA==".into(),
                meta: None,
            })),
        ]);
        let obs = observation(&r);
        assert!(obs.starts_with("hello\n\n[image: image/png, "), "{obs}");
        assert!(obs.contains(&format!("{} bytes]", decoded_len(&png))), "{obs}");
        assert!(obs.contains("[audio: audio/wav, 3 bytes]"), "{obs}");
        assert!(obs.contains("[resource file:///a.txt]\ninside"), "{obs}");
        assert!(obs.contains("[resource file:///b.bin: application/octet-stream, 4 bytes]"), "{obs}");
        assert!(!obs.contains("iVBOR"), "base64 leaked into the observation: {obs}");
    }

    #[test]
    fn structured_content_stands_in_for_missing_blocks() {
        let r = CallToolResult::structured(serde_json::json!({"sum": 3}));
        // `structured` also adds a text block with the JSON; either way the model sees it.
        assert!(observation(&r).contains("\"sum\":3"));
        let mut bare = result(vec![]);
        bare.structured_content = Some(serde_json::json!([1, 2]));
        assert_eq!(observation(&bare), "[1,2]");
    }

    #[test]
    fn a_huge_result_is_clipped() {
        let r = result(vec![ContentBlock::Text(TextContent::new("x".repeat(5 * 1024 * 1024)))]);
        assert!(observation(&r).len() <= MAX_OBSERVATION_BYTES + 64);
    }

    #[test]
    fn decoded_lengths_follow_the_padding() {
        assert_eq!(decoded_len("AAAA"), 3);
        assert_eq!(decoded_len("AAA="), 2);
        assert_eq!(decoded_len("AA=="), 1);
        assert_eq!(decoded_len(""), 0);
    }
}

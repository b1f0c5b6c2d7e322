//! The form of each job kind: its label, whether it uploads a file, and its fields. The engine
//! validates what arrives; this only says how to ask for it.

/// How a field is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Number {
        min: u32,
        max: u32,
    },
    Text,
    Url,
    Textarea,
    /// The kind's upload; its form field is always named `file`.
    File {
        accept: &'static str,
    },
    Select(&'static [(&'static str, &'static str)]),
    Date,
}

/// One form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub input: Input,
    pub default: &'static str,
    pub hint: &'static str,
}

/// One kind's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub summary: &'static str,
    pub fields: &'static [FieldSpec],
}

impl KindSpec {
    /// Upload kinds post a multipart form to `/upload`; the others call the `start_job` server
    /// function.
    pub fn uploads(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(f.input, Input::File { .. }))
    }

    pub fn field_names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|f| f.name).collect()
    }
}

const fn field(
    name: &'static str,
    label: &'static str,
    input: Input,
    default: &'static str,
    hint: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        label,
        input,
        default,
        hint,
    }
}

const STATES: &[(&str, &str)] = &[
    ("", "Any"),
    ("queued", "queued"),
    ("running", "running"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
];

const KIND_NAMES: &[(&str, &str)] = &[
    ("", "Any"),
    ("sleep", "sleep"),
    ("thumbnail", "thumbnail"),
    ("csv_import", "csv_import"),
    ("webhook", "webhook"),
    ("export", "export"),
];

/// Every kind a person can start from `/`, in the order the picker shows them.
pub const KINDS: [KindSpec; 5] = [
    KindSpec {
        name: "sleep",
        label: "Sleep",
        summary: "Waits in equal steps and reports progress after each: a way to watch Errand work.",
        fields: &[
            field(
                "ms",
                "Duration (ms)",
                Input::Number {
                    min: 0,
                    max: 600_000,
                },
                "3000",
                "0 to 600000",
            ),
            field(
                "steps",
                "Steps",
                Input::Number { min: 1, max: 1_000 },
                "10",
                "1 to 1000",
            ),
        ],
    },
    KindSpec {
        name: "thumbnail",
        label: "Thumbnails",
        summary: "Resizes a PNG, JPEG, WebP or GIF (up to 20 MB, 50 megapixels) into smaller copies, in its own format and in WebP.",
        fields: &[
            field(
                "file",
                "Image",
                Input::File {
                    accept: "image/png,image/jpeg,image/webp,image/gif",
                },
                "",
                "PNG, JPEG, WebP or GIF",
            ),
            field(
                "sizes",
                "Sizes (px)",
                Input::Text,
                "128,512,1024",
                "long side in pixels, comma-separated; never upscaled",
            ),
        ],
    },
    KindSpec {
        name: "csv_import",
        label: "CSV import",
        summary: "Reads a CSV (up to 100 MB) and reports each column's type and statistics, and every invalid row.",
        fields: &[field(
            "file",
            "CSV file",
            Input::File {
                accept: ".csv,text/csv",
            },
            "",
            "the first line names the columns",
        )],
    },
    KindSpec {
        name: "webhook",
        label: "Webhook",
        summary: "POSTs a JSON payload to a URL, retrying with backoff on 5xx answers, timeouts and connection errors.",
        fields: &[
            field(
                "url",
                "URL",
                Input::Url,
                "",
                "http or https; internal addresses are refused",
            ),
            field(
                "payload",
                "Payload (JSON)",
                Input::Textarea,
                "{\"hello\": \"errand\"}",
                "",
            ),
            field(
                "timeout_ms",
                "Timeout (ms)",
                Input::Number {
                    min: 100,
                    max: 60_000,
                },
                "10000",
                "100 to 60000 per attempt",
            ),
        ],
    },
    KindSpec {
        name: "export",
        label: "Export",
        summary: "Writes your job history to a CSV file to download.",
        fields: &[
            field("state", "State", Input::Select(STATES), "", ""),
            field("kind", "Kind", Input::Select(KIND_NAMES), "", ""),
            field(
                "from",
                "From",
                Input::Date,
                "",
                "created on or after this day (UTC)",
            ),
            field(
                "to",
                "To",
                Input::Date,
                "",
                "created on or before this day (UTC)",
            ),
        ],
    },
];

/// The kind named `name`, or the first (sleep).
pub fn kind_spec(name: &str) -> &'static KindSpec {
    KINDS.iter().find(|k| k.name == name).unwrap_or(&KINDS[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kinds_fall_back_to_the_first_and_uploads_are_detected() {
        assert_eq!(kind_spec("nope").name, "sleep");
        assert_eq!(kind_spec("webhook").name, "webhook");
        let uploads: Vec<_> = KINDS
            .iter()
            .filter(|k| k.uploads())
            .map(|k| k.name)
            .collect();
        assert_eq!(uploads, ["thumbnail", "csv_import"]);
    }
}

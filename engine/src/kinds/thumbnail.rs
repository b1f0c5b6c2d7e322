//! `thumbnail`: resizes an uploaded image (PNG, JPEG, WebP or GIF; at most 20 MB and 50
//! megapixels) to each requested size on the long side, keeping the aspect ratio and never
//! upscaling, and writes each variant in the original format and in WebP.

use super::{FormFields, InvalidInput, JobError, JobKind, SubmitContext, upload};
use crate::files::UploadId;
use crate::worker::JobContext;
use image::{DynamicImage, ImageFormat, ImageReader, imageops::FilterType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Largest upload accepted: 20 MB.
pub const MAX_BYTES: u64 = 20_000_000;
/// Largest image accepted: 50 megapixels.
pub const MAX_PIXELS: u64 = 50_000_000;
/// The longest side accepted, in pixels (within the pixel limit, a 1 × 50,000,000 strip would
/// still be a poor image).
const MAX_SIDE: u32 = 65_535;
const DEFAULT_SIZES: [u32; 3] = [128, 512, 1024];
const SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=4096;
const MAX_SIZES: usize = 8;

/// Parameters of a `thumbnail` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailArgs {
    pub upload: UploadId,
    /// Long-side sizes in pixels.
    #[serde(default = "default_sizes")]
    pub sizes: Vec<u32>,
}

fn default_sizes() -> Vec<u32> {
    DEFAULT_SIZES.to_vec()
}

/// The `thumbnail` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thumbnail;

impl JobKind for Thumbnail {
    const NAME: &'static str = "thumbnail";
    const MAX_UPLOAD: Option<u64> = Some(MAX_BYTES);
    type Args = ThumbnailArgs;

    fn from_form(fields: &FormFields) -> Result<ThumbnailArgs, InvalidInput> {
        let upload = upload::from_form(fields)?;
        let text = fields.get("sizes").map(|s| s.trim()).unwrap_or_default();
        let sizes = if text.is_empty() {
            default_sizes()
        } else {
            text.split(',')
                .map(|s| s.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    InvalidInput::field("sizes", "must be whole numbers separated by commas")
                })?
        };
        Ok(ThumbnailArgs { upload, sizes })
    }

    fn validate(args: &ThumbnailArgs, cx: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        if args.sizes.is_empty() || args.sizes.len() > MAX_SIZES {
            return Err(InvalidInput::field(
                "sizes",
                format!("give 1 to {MAX_SIZES} sizes"),
            ));
        }
        if let Some(bad) = args.sizes.iter().find(|s| !SIZE_RANGE.contains(s)) {
            return Err(InvalidInput::field(
                "sizes",
                format!(
                    "{bad} is not between {} and {}",
                    SIZE_RANGE.start(),
                    SIZE_RANGE.end()
                ),
            ));
        }
        let upload = upload::check(args.upload, MAX_BYTES, cx)?;
        probe(&upload.path).map(drop)
    }

    async fn run(&self, args: ThumbnailArgs, ctx: &JobContext) -> Result<Value, JobError> {
        let upload = upload::open(args.upload, ctx)?;
        let (format, (width, height)) =
            probe(&upload.path).map_err(|e| JobError::Permanent(e.message))?;
        // The decoded image stays in memory until the last size is written.
        let _slot = ctx.cpu_slot().await?;
        ctx.progress(0.0, Some("decoding".into())).await;
        let path = upload.path.clone();
        let image = tokio::task::spawn_blocking(move || decode(&path))
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))??;
        ctx.log(format!("decoded {width}×{height} {}", format_name(format)))
            .await;

        let dir = ctx
            .files()
            .job_dir(ctx.job_id())
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        let mut sizes = args.sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let targets: Vec<u32> = sizes
            .into_iter()
            .filter(|s| *s < width.max(height))
            .collect();
        if targets.is_empty() {
            ctx.log("the image is already no larger than every requested size")
                .await;
        }
        let mut outputs = Vec::new();
        for (done, size) in targets.iter().enumerate() {
            ctx.check_cancelled()?;
            ctx.progress(
                done as f64 / targets.len() as f64,
                Some(format!("{size} px")),
            )
            .await;
            let (image, dir, size) = (image.clone(), dir.clone(), *size);
            let written = tokio::task::spawn_blocking(move || render(&image, size, format, &dir))
                .await
                .map_err(|e| JobError::Retryable(e.to_string()))??;
            for output in &written {
                ctx.log(format!(
                    "wrote {} ({}×{}, {} bytes)",
                    output["name"], output["width"], output["height"], output["bytes"]
                ))
                .await;
            }
            outputs.extend(written);
        }
        Ok(json!({
            "source": {
                "name": upload.meta.filename,
                "format": format_name(format),
                "width": width,
                "height": height,
                "bytes": upload.meta.size,
            },
            "outputs": outputs,
        }))
    }
}

/// The image's format (from its bytes, not its name) and size, checked against the limits.
fn probe(path: &Path) -> Result<(ImageFormat, (u32, u32)), InvalidInput> {
    let not_image = || InvalidInput::field("file", "is not a PNG, JPEG, WebP or GIF image");
    let reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(|_| not_image())?;
    let format = reader
        .format()
        .filter(|f| {
            matches!(
                f,
                ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
            )
        })
        .ok_or_else(not_image)?;
    let (width, height) = reader.into_dimensions().map_err(|_| {
        InvalidInput::field(
            "file",
            "could not be read as an image (damaged or truncated?)",
        )
    })?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(InvalidInput::field("file", "is larger than 50 megapixels"));
    }
    Ok((format, (width, height)))
}

/// The most memory one decode may allocate: a 50-megapixel image at 8 bits per RGBA channel.
/// An image that needs more (16-bit channels at that size, a forged header) fails its job
/// instead of taking the server's memory.
pub const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 4;

fn decode(path: &Path) -> Result<DynamicImage, JobError> {
    let mut reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(|e| JobError::Retryable(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => JobError::Permanent(format!(
            "the image needs more than {} MB of memory to decode, the most a job may use",
            MAX_DECODE_BYTES / 1_000_000
        )),
        e => JobError::Permanent(format!("could not decode the image: {e}")),
    })
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Gif => "gif",
        _ => "webp",
    }
}

fn extension(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpg",
        other => format_name(other),
    }
}

/// Writes the `size` variant in the original format and in WebP; returns what it wrote.
fn render(
    image: &DynamicImage,
    size: u32,
    format: ImageFormat,
    dir: &Path,
) -> Result<Vec<Value>, JobError> {
    let resized = image.resize(size, size, FilterType::Lanczos3);
    let mut written = Vec::new();
    let mut formats = vec![format];
    if format != ImageFormat::WebP {
        formats.push(ImageFormat::WebP);
    }
    for target in formats {
        // JPEG has no alpha channel; WebP's encoder takes 8-bit RGB(A).
        let pixels = match target {
            ImageFormat::Jpeg => DynamicImage::ImageRgb8(resized.to_rgb8()),
            _ if resized.color().has_alpha() => DynamicImage::ImageRgba8(resized.to_rgba8()),
            _ => DynamicImage::ImageRgb8(resized.to_rgb8()),
        };
        let mut bytes = Cursor::new(Vec::new());
        pixels.write_to(&mut bytes, target).map_err(|e| {
            JobError::Permanent(format!("could not encode {}: {e}", format_name(target)))
        })?;
        let name = format!("thumb-{size}.{}", extension(target));
        let path: PathBuf = dir.join(&name);
        let bytes = bytes.into_inner();
        std::fs::write(&path, &bytes).map_err(|e| JobError::Retryable(e.to_string()))?;
        written.push(json!({
            "name": name,
            "format": format_name(target),
            "width": pixels.width(),
            "height": pixels.height(),
            "bytes": bytes.len(),
        }));
    }
    Ok(written)
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A small valid image in each format the kind reads.
    fn samples() -> Vec<Vec<u8>> {
        let image = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(17, 9, |x, y| {
            image::Rgba([(x * 15) as u8, (y * 28) as u8, 7, 200])
        }));
        [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ]
        .into_iter()
        .map(|format| {
            let image = if format == ImageFormat::Jpeg {
                DynamicImage::ImageRgb8(image.to_rgb8())
            } else {
                image.clone()
            };
            let mut bytes = Cursor::new(Vec::new());
            image.write_to(&mut bytes, format).expect("encode");
            bytes.into_inner()
        })
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

        /// A valid image with bytes overwritten or cut off (forged sizes, broken chunks) is
        /// probed and decoded to an image or an error, never a panic, and never past the limits.
        #[test]
        fn damaged_images_decode_or_fail_cleanly(
            which in 0..4_usize,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = samples().swap_remove(which);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("upload");
            std::fs::write(&path, &bytes).expect("write");
            if probe(&path).is_ok()
                && let Ok(image) = decode(&path)
            {
                prop_assert!(u64::from(image.width()) * u64::from(image.height()) <= MAX_PIXELS);
            }
        }

        /// Arbitrary bytes are refused by the probe or fail to decode, never a panic.
        #[test]
        fn any_bytes_are_probed_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..2_048)) {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("upload");
            std::fs::write(&path, &bytes).expect("write");
            if probe(&path).is_ok() {
                let _ = decode(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }));
        let mut bytes = Cursor::new(Vec::new());
        image
            .write_to(&mut bytes, ImageFormat::Png)
            .expect("encode");
        bytes.into_inner()
    }

    #[test]
    fn variants_keep_the_aspect_ratio_in_both_formats() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let image = image::load_from_memory(&png(300, 200)).expect("decode");
        let written = render(&image, 128, ImageFormat::Png, dir.path()).expect("render");
        let names: Vec<_> = written
            .iter()
            .map(|o| o["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, ["thumb-128.png", "thumb-128.webp"]);
        for output in &written {
            assert_eq!(
                (output["width"].as_u64(), output["height"].as_u64()),
                (Some(128), Some(85))
            );
        }
        let webp = std::fs::read(dir.path().join("thumb-128.webp"))?;
        assert_eq!(image::guess_format(&webp).ok(), Some(ImageFormat::WebP));
        Ok(())
    }

    #[test]
    fn probing_checks_the_bytes_not_the_name() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let fake = dir.path().join("fake.png");
        std::fs::write(&fake, b"not an image at all")?;
        assert_eq!(
            probe(&fake).expect_err("text").field.as_deref(),
            Some("file")
        );
        let real = dir.path().join("real");
        std::fs::write(&real, png(40, 30))?;
        assert_eq!(probe(&real).ok(), Some((ImageFormat::Png, (40, 30))));
        let mut truncated = png(40, 30);
        truncated.truncate(20);
        std::fs::write(&real, truncated)?;
        assert!(probe(&real).is_err());
        Ok(())
    }

    #[test]
    fn sizes_come_from_the_form() {
        let fields: FormFields = [
            ("upload".to_owned(), UploadId::generate().to_string()),
            ("sizes".to_owned(), "64, 256".to_owned()),
        ]
        .into();
        assert_eq!(
            Thumbnail::from_form(&fields).map(|a| a.sizes),
            Ok(vec![64, 256])
        );
        let bad: FormFields = [
            ("upload".to_owned(), UploadId::generate().to_string()),
            ("sizes".to_owned(), "big".to_owned()),
        ]
        .into();
        assert_eq!(
            Thumbnail::from_form(&bad)
                .expect_err("bad")
                .field
                .as_deref(),
            Some("sizes")
        );
        let missing: FormFields = FormFields::new();
        assert_eq!(
            Thumbnail::from_form(&missing)
                .expect_err("no upload")
                .field
                .as_deref(),
            Some("file")
        );
    }
}

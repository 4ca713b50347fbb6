import Foundation
import I2VCore
import I2VGPUNode
import Subprocess

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// The still of a video's first frame, as JPEG, cut by ffmpeg (which the worker already needs) when it
/// is asked for. Nothing is stored: a cut takes milliseconds, and a stored still would be one more file
/// for the sweeper to know about.
package struct VideoThumbnail: Sendable {
    package enum Failure: Error, Sendable, Equatable {
        /// ffmpeg could not be started.
        case unavailable(String)
        /// ffmpeg ran and failed (the file is not a video it can read).
        case failed(String)
    }

    /// The most bytes kept from ffmpeg: far above any frame this service makes.
    package static let maxBytes = 32 * 1024 * 1024

    package var ffmpeg = "ffmpeg"

    package func firstFrame(of video: URL) async throws(Failure) -> [UInt8] {
        let status: TerminationStatus, output: [UInt8], detail: String
        do {
            let result = try await Subprocess.run(
                ffmpeg.contains("/") ? .path(FilePath(ffmpeg)) : .name(ffmpeg),
                arguments: [
                    "-nostdin", "-v", "error", "-i", video.path, "-frames:v", "1",
                    // Full-range 4:2:0, the pixel format baseline JPEG decoders expect.
                    "-pix_fmt", "yuvj420p", "-c:v", "mjpeg", "-q:v", "3", "-f", "image2pipe", "pipe:1",
                ],
                output: .bytes(limit: Self.maxBytes),
                error: .string(limit: 4096)
            )
            status = result.terminationStatus
            output = result.standardOutput
            detail = result.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw .unavailable("thumbnails need ffmpeg on the server's PATH: \(error)")
        }
        guard status.isSuccess, !output.isEmpty else {
            throw .failed("ffmpeg could not read the video\(detail.isEmpty ? "" : ": \(detail)")")
        }
        return output
    }
}

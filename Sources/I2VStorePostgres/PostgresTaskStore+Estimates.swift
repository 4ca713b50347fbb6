import Foundation
import I2VCore
import PostgresNIO

extension PostgresTaskStore {
    public func jobProfile(width: Int, height: Int, frames: Int) async throws -> JobProfile? {
        try await withDeadline {
            let rows = try await client.query(
                """
                SELECT count(*), avg(inference_seconds / greatest(1, coalesce(result_infer_steps, infer_steps))),
                    avg(encode_seconds)
                FROM (
                    SELECT inference_seconds, encode_seconds, result_infer_steps, infer_steps FROM tasks
                    WHERE status = 'Succeed' AND width = \(width) AND height = \(height) AND num_frames = \(frames)
                    ORDER BY seq DESC LIMIT \(JobProfile.sampleSize)
                ) AS recent
                """,
                logger: logger
            )
            for try await (jobs, perStep, encode) in rows.decode((Int, Double?, Double?).self) {
                guard jobs > 0, let perStep, let encode else { return nil }
                return JobProfile(secondsPerStep: perStep, encodeSeconds: encode)
            }
            return nil
        }
    }

    public func runningWork() async throws -> [RemainingWork] {
        try await withDeadline {
            let rows = try await client.query(
                """
                SELECT width, height, num_frames, greatest(0, coalesce(progress_total, infer_steps) - coalesce(progress_step, 0))
                FROM tasks WHERE status = 'InProgress'
                """,
                logger: logger
            )
            var work: [RemainingWork] = []
            for try await (width, height, frames, steps) in rows.decode((Int, Int, Int, Int).self) {
                work.append(RemainingWork(width: width, height: height, frames: frames, steps: steps))
            }
            return work
        }
    }
}

import Foundation
import GRDB
import I2VCore

extension SQLiteTaskStore {
    public func jobProfile(width: Int, height: Int, frames: Int) async throws -> JobProfile? {
        try await database.read { db in
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT count(*) AS jobs, avg(inference_seconds / max(1, coalesce(result_infer_steps, infer_steps))) AS per_step,
                        avg(encode_seconds) AS encode
                    FROM (
                        SELECT inference_seconds, encode_seconds, result_infer_steps, infer_steps FROM tasks
                        WHERE status = 'Succeed' AND width = ? AND height = ? AND num_frames = ?
                        ORDER BY seq DESC LIMIT ?
                    )
                    """,
                arguments: [width, height, frames, JobProfile.sampleSize]
            )
            guard let row, (row["jobs"] as Int) > 0 else { return nil }
            return JobProfile(secondsPerStep: row["per_step"], encodeSeconds: row["encode"])
        }
    }

    public func runningWork() async throws -> [RemainingWork] {
        try await database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT width, height, num_frames, max(0, coalesce(progress_total, infer_steps) - coalesce(progress_step, 0)) AS steps
                    FROM tasks WHERE status = 'InProgress'
                    """
            ).map { RemainingWork(width: $0["width"], height: $0["height"], frames: $0["num_frames"], steps: $0["steps"]) }
        }
    }
}

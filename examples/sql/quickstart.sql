-- ArrowQuant quickstart: quantize a small weights table by SQL.
-- Run from the repository root:  arrowquant sql -f examples/sql/quickstart.sql

CREATE EXTERNAL TABLE layers STORED AS PARQUET LOCATION 'examples/data/weights.parquet';

-- What is in the table: one row per output channel of each tensor.
SELECT layer, count(*) AS rows, max(array_length(weights)) AS row_len,
       round(weight_stats_agg(weights)['std'], 5) AS std,
       round(weight_stats_agg(weights)['kurtosis'], 3) AS kurtosis
FROM layers GROUP BY layer ORDER BY layer;

-- Quantize every row at 4 bits (groups of 64, f16 scale and offset) and check each tensor.
SELECT layer,
       round(tensor_cosine(weights, dequantize(q)), 6) AS cosine,
       round(avg(sqnr_db(weights, dequantize(q))), 2) AS sqnr_db,
       round(avg(compression_ratio(q)), 2) AS ratio
FROM (SELECT layer, weights, quantize(weights, 4) AS q FROM layers)
GROUP BY layer ORDER BY layer;

-- The bits-versus-error trade-off, without keeping the codes (GGUF blocks need rows that are
-- a whole number of blocks of 32).
SELECT s.scheme, s.bits,
       round(avg(quant_error(weights, s.bits, 32, s.scheme)['cosine']), 6) AS mean_cosine,
       round(avg(quant_error(weights, s.bits, 32, s.scheme)['compression_ratio']), 2) AS ratio
FROM layers, (VALUES ('asym', 2), ('asym', 4), ('q4_0', 4), ('q4_1', 4), ('q5_0', 5), ('asym', 8), ('q8_0', 8)) s(scheme, bits)
WHERE array_length(weights) % 32 = 0
GROUP BY s.scheme, s.bits ORDER BY s.bits, s.scheme;

-- Store the quantized model as Parquet: the struct column round-trips.
COPY (SELECT layer, row, quantize(weights, 4) AS q FROM layers) TO '/tmp/arrowquant_quickstart.parquet' STORED AS PARQUET;

SELECT count(*) AS rows, round(min(cosine_similarity(l.weights, dequantize(q.q))), 6) AS min_row_cosine
FROM '/tmp/arrowquant_quickstart.parquet' q JOIN layers l ON q.layer = l.layer AND q.row = l.row;

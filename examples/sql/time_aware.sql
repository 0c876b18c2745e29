-- Time-aware activation quantization of the bundled UNet, by hand in SQL: static ranges,
-- timestep groups (uniform and adaptive), boundary smoothing and transition optimisation,
-- each measured on the recorded calibration set (76 layers × 100 timesteps of a DDPM run).
-- Run from the repository root:  arrowquant sql -f examples/sql/time_aware.sql
--
-- Every setting is evaluated per (layer, timestep): the timestep's activations (64 order
-- statistics of the layer input) are rounded to the grid its setting gives that timestep,
-- and the MSE is averaged over all layers and timesteps. Markov violations are counted on each
-- layer's per-timestep scale sequence (a jump of more than 25 % between recorded timesteps).

CREATE EXTERNAL TABLE calibration STORED AS PARQUET
LOCATION 'examples/calibration/tiny-unet-ddpm.parquet';

-- Groups: 10 per layer, uniform over the 1000-step schedule, or adaptive — the optimal cut of
-- each layer's per-timestep range (max − min) into 10 runs of least spread.
CREATE VIEW timesteps AS
SELECT layer, timestep, "values",
       timestep_group(timestep, 1000, 10) AS tg_uniform,
       timestep_group_adaptive(array_max("values") - array_min("values"), 10)
         OVER (PARTITION BY layer ORDER BY timestep) AS tg_adaptive
FROM calibration;

-- (a) one static range per layer.
CREATE VIEW static_params AS
SELECT layer, 8 AS bits, quant_params("values", 8) AS p FROM calibration GROUP BY layer
UNION ALL
SELECT layer, 4 AS bits, quant_params("values", 4) AS p FROM calibration GROUP BY layer;

-- (b) one range per timestep group.
CREATE VIEW uniform_params AS
SELECT layer, tg_uniform AS tg, 8 AS bits, quant_params("values", 8) AS p,
       flatten(array_agg("values")) AS state
FROM timesteps GROUP BY layer, tg_uniform
UNION ALL
SELECT layer, tg_uniform AS tg, 4 AS bits, quant_params("values", 4) AS p,
       flatten(array_agg("values")) AS state
FROM timesteps GROUP BY layer, tg_uniform;

CREATE VIEW adaptive_params AS
SELECT layer, tg_adaptive AS tg, 8 AS bits, quant_params("values", 8) AS p FROM timesteps GROUP BY layer, tg_adaptive
UNION ALL
SELECT layer, tg_adaptive AS tg, 4 AS bits, quant_params("values", 4) AS p FROM timesteps GROUP BY layer, tg_adaptive;

-- (d) the uniform groups' ranges chosen jointly: relative MSE + 1·Markov + 0.01·entropy,
-- solved exactly by dynamic programming over candidate ranges.
CREATE VIEW optimized_params AS
SELECT layer, tg, bits, thermo_optimize(state, 8, 1.0, 0.01) OVER (PARTITION BY layer ORDER BY tg) AS p
FROM uniform_params WHERE bits = 8
UNION ALL
SELECT layer, tg, bits, thermo_optimize(state, 4, 1.0, 0.01) OVER (PARTITION BY layer ORDER BY tg) AS p
FROM uniform_params WHERE bits = 4;

-- Each setting's scale and offset at every recorded timestep. (c) smooths (b) at the group
-- boundaries (linear ramps between group centres, of scale and offset alike); (d) smooths the
-- optimised ranges the same way.
CREATE VIEW schedules AS
SELECT '(a) static' AS setting, t.layer, t.timestep, t."values", s.bits,
       s.p['scale'] AS scale, s.p['offset'] AS "offset"
FROM timesteps t JOIN static_params s ON t.layer = s.layer
UNION ALL
SELECT '(b) uniform groups', t.layer, t.timestep, t."values", g.bits, g.p['scale'], g.p['offset']
FROM timesteps t JOIN uniform_params g ON t.layer = g.layer AND t.tg_uniform = g.tg
UNION ALL
SELECT '(b) adaptive groups', t.layer, t.timestep, t."values", g.bits, g.p['scale'], g.p['offset']
FROM timesteps t JOIN adaptive_params g ON t.layer = g.layer AND t.tg_adaptive = g.tg
UNION ALL
SELECT '(c) + smoothing', layer, timestep, "values", bits,
       thermo_smooth(scale, 'linear') OVER w, thermo_smooth("offset", 'linear') OVER w
FROM (SELECT t.layer, t.timestep, t."values", g.bits, g.p['scale'] AS scale, g.p['offset'] AS "offset"
      FROM timesteps t JOIN uniform_params g ON t.layer = g.layer AND t.tg_uniform = g.tg)
WINDOW w AS (PARTITION BY layer, bits ORDER BY timestep)
UNION ALL
SELECT '(d) + optimisation', layer, timestep, "values", bits,
       thermo_smooth(scale, 'linear') OVER w, thermo_smooth("offset", 'linear') OVER w
FROM (SELECT t.layer, t.timestep, t."values", o.bits, o.p['scale'] AS scale, o.p['offset'] AS "offset"
      FROM timesteps t JOIN optimized_params o ON t.layer = o.layer AND t.tg_uniform = o.tg)
WINDOW w AS (PARTITION BY layer, bits ORDER BY timestep);

-- The comparison: mean activation MSE over all layers and timesteps, and Markov violations of
-- the per-timestep scales.
SELECT setting, bits,
       avg(quant_mse("values", scale, "offset", bits)) AS mean_mse,
       count(*) FILTER (WHERE violation) AS markov_violations
FROM (SELECT setting, bits, "values", scale, "offset",
             markov_violation(scale) OVER (PARTITION BY setting, layer, bits ORDER BY timestep) AS violation
      FROM schedules)
GROUP BY setting, bits ORDER BY bits DESC, setting;

-- The transition objective (relative MSE + 1·Markov + 0.01·entropy over each layer's chain of
-- uniform groups), summed over layers: (d) is its exact minimum, so it is never above (b).
SELECT b.bits, sum(b.objective) AS per_group_quant_params, sum(d.objective) AS optimized
FROM (SELECT layer, tg, bits, thermo_objective(state, p['scale'], p['offset'], 8, 1.0, 0.01)
             OVER (PARTITION BY layer ORDER BY tg) AS objective
      FROM uniform_params WHERE bits = 8
      UNION ALL
      SELECT layer, tg, bits, thermo_objective(state, p['scale'], p['offset'], 4, 1.0, 0.01)
             OVER (PARTITION BY layer ORDER BY tg) AS objective
      FROM uniform_params WHERE bits = 4) b
JOIN (SELECT layer, tg, bits, p['objective'] AS objective FROM optimized_params) d
  ON b.layer = d.layer AND b.tg = d.tg AND b.bits = d.bits
WHERE b.tg = 0
GROUP BY b.bits ORDER BY b.bits DESC;
